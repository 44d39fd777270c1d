"""Pictures for the HTML report: organ meshes as a plotly 3D figure, and outlined CT slices as PNGs.

Both work in world RAS+ millimetres (``Volume.affine``: voxel (i, j, k) -> RAS+), whatever the file's
orientation:

- ``organ_figure``: one ``plotly.graph_objects.Mesh3d`` per organ (surfaces from
  ``rendering.build_meshes``, decimated), true proportions (aspect ratio from the data), first shown from the
  front: the camera sits on the patient's anterior side (+y) looking posteriorly, head (+z) up, so the
  patient's right (+x) is on the viewer's left, as on a radiological frontal image.
- ``organ_slices``: axial, coronal and sagittal slices through one organ, cropped around it, CT in the
  abdominal window (-175..250 HU), every organ's boundary drawn in its label colour, square pixels. Display
  convention (radiological): axial -- anterior up, patient's right on the left; coronal -- superior up,
  patient's right on the left; sagittal -- superior up, anterior on the left.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

import imageio.v3 as iio
import nibabel as nib
import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

from organseg.rendering import CT_HU_WINDOW

#: Size of the scene's longest axis in plotly's normalised units (1 = plotly's default for "data").
ASPECT_SCALE = 2.2
#: Largest side of a slice image (pixels); slices are cropped around the organ first.
SLICE_MAX_PX = 288
#: Margin around the organ in each slice (mm).
SLICE_MARGIN_MM = 25.0
#: Plane name -> (array axis fixed by the plane, in the RAS-ordered array).
PLANES: dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}


#: Lights fixed to the patient (RAS+ directions, weights): a key light from the front, above and to the
#: patient's right, and a weaker fill from behind, so the posterior side is not black when turned.
LIGHTS: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((0.35, 1.0, 0.6), 0.65),
    ((-0.3, -1.0, 0.2), 0.3),
)
_AMBIENT = 0.35


def shade(normals: np.ndarray) -> np.ndarray:
    """Lambert shading (0..1) of unit vertex normals under ``LIGHTS``, plus ambient.

    The shading is baked into the vertex colours instead of left to plotly's WebGL lights, whose
    result differs between GPU and software renderers (a hard terminator in headless Chromium).
    """
    value = np.full(len(normals), _AMBIENT)
    for direction, weight in LIGHTS:
        d = np.asarray(direction) / np.linalg.norm(direction)
        value += weight * np.clip(normals @ d, 0, None)
    return np.clip(value, 0, 1)


def organ_figure(meshes: Mapping, colors: Mapping[str, tuple[int, int, int]]):
    """A plotly figure holding ``meshes`` (name -> ``pyvista.PolyData`` in world RAS+ mm, with point
    normals as ``rendering.build_meshes`` makes them)."""
    import plotly.graph_objects as go

    traces = []
    for name, mesh in meshes.items():
        faces = np.asarray(mesh.faces).reshape(-1, 4)[:, 1:]  # triangles: [3, a, b, c] per cell
        pts = np.asarray(mesh.points, dtype=np.float32)
        normals = np.asarray(mesh.point_data["Normals"], dtype=np.float64)
        r, g, b = colors[name]
        dark = f"rgb({int(r * 0.15)},{int(g * 0.15)},{int(b * 0.15)})"
        traces.append(
            go.Mesh3d(
                x=pts[:, 0],
                y=pts[:, 1],
                z=pts[:, 2],
                i=faces[:, 0].astype(np.int32),
                j=faces[:, 1].astype(np.int32),
                k=faces[:, 2].astype(np.int32),
                intensity=shade(normals).astype(np.float32),
                colorscale=[[0.0, dark], [1.0, f"rgb({r},{g},{b})"]],
                cmin=0.0,
                cmax=1.0,
                showscale=False,
                name=name.replace("_", " "),
                showlegend=True,
                flatshading=False,
                lighting={"ambient": 1.0, "diffuse": 0.0, "specular": 0.0, "fresnel": 0.0},
                hovertemplate=f"{name}<br>x %{{x:.0f}} y %{{y:.0f}} z %{{z:.0f}} mm (RAS)<extra></extra>",
            )
        )
    fig = go.Figure(traces)
    # True proportions, scaled up: plotly's orthographic camera ignores the eye's distance, so the
    # scene's aspect ratio (largest axis ASPECT_SCALE) sets how much of the panel the organs fill.
    lo = np.min([np.asarray(m.bounds).reshape(3, 2)[:, 0] for m in meshes.values()], axis=0)
    hi = np.max([np.asarray(m.bounds).reshape(3, 2)[:, 1] for m in meshes.values()], axis=0)
    extent = np.maximum(hi - lo, 1.0)
    ratio = extent / extent.max() * ASPECT_SCALE
    axis = {"showbackground": False, "gridcolor": "#444", "zerolinecolor": "#666", "color": "#bbb"}
    fig.update_layout(
        scene={
            "aspectmode": "manual",
            "aspectratio": {"x": ratio[0], "y": ratio[1], "z": ratio[2]},
            "xaxis": {**axis, "title": {"text": "x mm (+ = patient's right)"}},
            "yaxis": {**axis, "title": {"text": "y mm (+ = anterior)"}},
            "zaxis": {**axis, "title": {"text": "z mm (+ = superior)"}},
            # Anterior view: eye on +y, head up. Looking along -y with +z up puts +x (patient's right)
            # on the viewer's left.
            "camera": {
                "eye": {"x": 0.0, "y": 0.9, "z": 0.0},
                "up": {"x": 0, "y": 0, "z": 1},
                "projection": {"type": "orthographic"},
            },
        },
        paper_bgcolor="#101218",
        font={"color": "#ddd"},
        margin={"l": 0, "r": 0, "t": 30, "b": 0},
        height=560,
        legend={"x": 0.01, "y": 0.99, "bgcolor": "rgba(0,0,0,0.4)"},
        title={"text": "Organs (drag to rotate, scroll to zoom) — anterior view", "x": 0.5},
    )
    return fig


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(array reordered to RAS axes, spacing_mm along them)`` by flips and transposes only (a view).

    The nearest axis permutation is used, so an oblique grid is shown without resampling (slices are
    then slightly tilted in world space, which does not matter for a visual check).
    """
    ornt = nib.orientations.io_orientation(affine)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    ras = nib.orientations.apply_orientation(array, ornt)
    out_spacing = np.empty(3)
    for axis, (new_axis, _flip) in enumerate(ornt):
        out_spacing[int(new_axis)] = spacing[axis]
    return ras, out_spacing


def ras_box(box: tuple[slice, ...], shape: tuple[int, ...], affine: np.ndarray) -> tuple[slice, ...]:
    """A bounding box (``find_objects`` slices on the stored array) in the array ``to_ras`` returns."""
    ornt = nib.orientations.io_orientation(affine)
    out: list[slice] = [slice(0)] * 3
    for axis, (new_axis, flip) in enumerate(ornt):
        s, n = box[axis], shape[axis]
        out[int(new_axis)] = slice(n - s.stop, n - s.start) if flip < 0 else s
    return tuple(out)


def _png_data_uri(rgb: np.ndarray) -> str:
    data = iio.imwrite("<bytes>", rgb, extension=".png")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _display(plane2d: np.ndarray) -> np.ndarray:
    # (a, b) with a, b increasing toward R/A/S -> rows top-down = b descending, columns = a descending:
    # axial: anterior up, right on the left; coronal & sagittal: superior up, right/anterior on the left.
    return plane2d.T[::-1, ::-1]


def organ_slices(
    ct_ras: np.ndarray,
    mask_ras: np.ndarray,
    spacing_mm: np.ndarray,
    label: int,
    box: tuple[slice, slice, slice],
    colors: Mapping[int, tuple[int, int, int]],
) -> dict[str, str]:
    """Three outlined slices through organ ``label`` as PNG data URIs (plane name -> ``data:`` URI).

    Each slice is the one where the organ's cross-section is largest in that plane, cropped to the organ
    plus ``SLICE_MARGIN_MM``; ``ct_ras`` and ``mask_ras`` are on the same RAS-ordered grid (``to_ras``),
    ``box`` is the organ's bounding box in that grid (``scipy.ndimage.find_objects``).
    """
    margin = np.ceil(SLICE_MARGIN_MM / spacing_mm).astype(int)
    lo = [max(0, s.start - m) for s, m in zip(box, margin, strict=True)]
    hi = [min(n, s.stop + m) for s, m, n in zip(box, margin, mask_ras.shape, strict=True)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub_mask = np.asarray(mask_ras[crop])
    sub_ct = np.asarray(ct_ras[crop], dtype=np.float32)
    inside = sub_mask == label
    out = {}
    lo_hu, hi_hu = CT_HU_WINDOW
    for plane, axis in PLANES.items():
        area = inside.sum(axis=tuple(a for a in range(3) if a != axis))
        index = int(np.argmax(area))
        ct2d = _display(np.take(sub_ct, index, axis=axis))
        lab2d = _display(np.take(sub_mask, index, axis=axis))
        rest = [a for a in range(3) if a != axis]
        # Displayed rows follow the second remaining axis, columns the first.
        row_mm, col_mm = spacing_mm[rest[1]], spacing_mm[rest[0]]
        # Square pixels, the longer side SLICE_MAX_PX: thick-slice and small crops are enlarged too.
        px_mm = max(ct2d.shape[0] * row_mm, ct2d.shape[1] * col_mm) / SLICE_MAX_PX
        zoom = (row_mm / px_mm, col_mm / px_mm)
        ct2d = ndimage.zoom(ct2d, zoom, order=1, prefilter=False)
        lab2d = ndimage.zoom(lab2d, zoom, order=0, prefilter=False)
        grey = (np.clip((ct2d - lo_hu) / (hi_hu - lo_hu), 0, 1) * 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        for value in np.unique(lab2d):
            if value == 0:
                continue
            edge = find_boundaries(lab2d == value, mode="inner")
            if value == label:
                edge = ndimage.binary_dilation(edge)  # the organ of this row: a thicker line
            rgb[edge] = colors.get(int(value), (160, 160, 160))
        out[plane] = _png_data_uri(rgb)
    return out
