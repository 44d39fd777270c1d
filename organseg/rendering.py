"""Turn a label mask into organ surfaces and a rotating video (or a still PNG), headless.

Geometry: surfaces are extracted per organ with marching cubes in voxel index space (i, j, k) and then
mapped through the mask's affine (spacing *and* direction) into **world RAS+ millimetres**, so organs keep
their true proportions and the patient's right stays the patient's right whatever the file's orientation.

View convention (frame 0 and the orbit):
    * head up: world +z (superior) points up on screen;
    * anterior view: the camera sits on the patient's anterior side (+y) looking posteriorly (-y), as when
      facing the patient. The patient's right (+x in RAS) therefore appears on the viewer's LEFT, as on a
      radiological frontal (coronal) image: the liver is on the left of frame 0;
    * the camera then orbits 360 degrees about the superior axis, counter-clockwise seen from above:
      anterior -> patient's left -> posterior -> patient's right;
    * parallel projection: sizes on screen are true proportions and stay constant during the orbit;
    * with a CT plane the camera looks down 20 degrees so the axial slice beneath the organs is visible.

Rendering runs off-screen through VTK's EGL window (software Mesa "llvmpipe" when no GPU): no X server is
needed. On Debian/Ubuntu the system packages ``libegl1 libegl-mesa0 libgl1-mesa-dri`` provide it
(``libosmesa6`` with ``VTK_DEFAULT_OPENGL_WINDOW=vtkOSOpenGLRenderWindow`` is an alternative). The video
is H.264 (libx264, yuv420p) through the ffmpeg binary shipped in the imageio-ffmpeg wheel.

Example:
    >>> render("mask.nii.gz", "organs.mp4", frames=72, fps=24, size=(720, 720), preview="organs.png")
    PosixPath('organs.mp4')
    >>> meshes = build_meshes(read_nifti("mask.nii.gz"))      # {"liver": PolyData, ...} in world mm
    >>> frame0 = render_frame(meshes, size=(256, 256))       # (256, 256, 3) uint8
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pyvista as pv
from scipy import ndimage
from tqdm import tqdm

from organseg.config import LabelMap
from organseg.errors import ConfigError, InputError, OutputError
from organseg.io import Volume, atomic_path, check_writable, read_nifti
from organseg.surfaces import MAX_LABEL_VALUE, MC_MAX_VOXELS, build_meshes, label_array  # noqa: F401 (re-exported)

#: HU window of the CT plane (abdominal soft tissue), mapped to black..white.
CT_HU_WINDOW: tuple[float, float] = (-175.0, 250.0)
#: Where the legend sits, as fractions of the frame (left, top, right, bottom) measured from the top-left.
LEGEND_BOX: tuple[float, float, float, float] = (0.7, 0.81, 0.99, 0.99)
#: Background of every frame (RGB 0-255): dark, so organ colours and the grey CT plane stand out.
BACKGROUND_RGB: tuple[int, int, int] = (16, 18, 24)

_CT_ELEVATION_DEG = 20.0
_VIEW_MARGIN = 1.12
_CRF = 20  # x264 quality: visually lossless for flat-shaded surfaces, small files


# --------------------------------------------------------------------------------------- mask input


def _load_volume(image: str | Path | Volume, what: str) -> Volume:
    if isinstance(image, Volume):
        return image
    path = Path(image)
    if not path.exists():
        raise InputError(f"{path}: {what} not found (no such file or folder)")
    return read_nifti(path)


# --------------------------------------------------------------------------------------- CT plane


def ct_plane(
    ct: str | Path | Volume, meshes: Mapping[str, pv.PolyData], margin_mm: float = 20.0
) -> pv.ImageData:
    """An axial CT slice at the lowest organ level, resampled in world coordinates (point data ``hu``).

    The slice covers the organs' x-y footprint plus ``margin_mm``; it is sampled through the CT's own
    affine (trilinear), so any CT grid aligned in world space with the mask works.
    """
    vol = _load_volume(ct, "CT")
    arr = np.asanyarray(vol.array)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputError(f"{vol.source}: expected a 3D CT volume, got an array of shape {arr.shape}")
    lo, hi = _bounds(meshes)
    z_mm = float(lo[2])
    x0, y0 = lo[:2] - margin_mm
    x1, y1 = hi[:2] + margin_mm
    step_mm = max(min(vol.spacing_mm[:2]), (x1 - x0) / 512, (y1 - y0) / 512)
    nx, ny = int((x1 - x0) / step_mm) + 1, int((y1 - y0) / step_mm) + 1
    xs, ys = x0 + step_mm * np.arange(nx), y0 + step_mm * np.arange(ny)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    world = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z_mm), np.ones(gx.size)])
    ijk = (np.linalg.inv(vol.affine) @ world)[:3]
    # Organ surfaces reach half a voxel beyond the mask (and the CT), so allow one voxel of slack there.
    inside = np.all((ijk >= -1.0) & (ijk <= np.array(arr.shape)[:, None]), axis=0)
    if not inside.any():
        raise InputError(
            f"{vol.source}: the CT does not cover the organs' lowest level (z = {z_mm:.1f} mm RAS)"
        )
    # Crop to the voxels the slice touches, so a 512x512x300 CT is not converted as a whole.
    start = np.clip(np.floor(ijk[:, inside].min(axis=1)).astype(int) - 1, 0, np.array(arr.shape) - 1)
    stop = np.maximum(np.minimum(np.ceil(ijk[:, inside].max(axis=1)).astype(int) + 2, arr.shape), start + 1)
    block = np.asarray(arr[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))], dtype=np.float32)
    hu = ndimage.map_coordinates(block, ijk - start[:, None], order=1, mode="nearest")
    hu[~inside] = -1024.0  # air outside the scan
    plane = pv.ImageData(dimensions=(nx, ny, 1), spacing=(step_mm, step_mm, 1.0), origin=(x0, y0, z_mm - 0.5))
    plane.point_data["hu"] = hu.reshape(nx, ny).ravel(order="F")  # VTK point order: x fastest
    return plane


# --------------------------------------------------------------------------------------- scene


def _bounds(meshes: Mapping[str, pv.PolyData]) -> tuple[np.ndarray, np.ndarray]:
    pts = [np.asarray(m.bounds).reshape(3, 2) for m in meshes.values()]
    return np.min([p[:, 0] for p in pts], axis=0), np.max([p[:, 1] for p in pts], axis=0)


def _display_name(name: str) -> str:
    return name.replace("_", " ")


def _prefer_headless_window() -> None:
    # Without a display VTK first tries X11 and logs "bad X server connection" before falling back to
    # EGL. Choosing EGL up front silences that; a backend chosen by the user is never overridden.
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def _lights() -> list[pv.Light]:
    """Key, fill and rim lights that move with the camera (positions in camera space: x right, y up,
    z toward the viewer), so every frame of the orbit is lit alike and the shape reads: a strong key
    from the upper left, a soft fill from the right, a weak rim from behind that outlines the silhouette."""
    lights = []
    for position, intensity in (((-1.0, 1.2, 1.5), 0.85), ((1.2, -0.3, 1.0), 0.35), ((0.0, 0.8, -1.5), 0.3)):
        light = pv.Light(
            position=position, focal_point=(0, 0, 0), intensity=intensity, light_type="camera light"
        )
        lights.append(light)
    return lights


class _Scene:
    """An off-screen plotter holding the organs (and CT plane); ``frame(angle)`` renders one view."""

    def __init__(
        self,
        meshes: Mapping[str, pv.PolyData],
        size: tuple[int, int],
        title: str | None,
        plane: pv.ImageData | None,
        legend: bool,
    ) -> None:
        _prefer_headless_window()
        self.plotter = p = pv.Plotter(off_screen=True, window_size=list(size), lighting="none")
        for light in _lights():
            p.add_light(light)
        p.set_background(np.array(BACKGROUND_RGB) / 255)
        entries = []
        for name, mesh in meshes.items():
            color = np.asarray(mesh.field_data["rgb"], dtype=float) / 255
            p.add_mesh(
                mesh,
                color=color,
                smooth_shading=True,
                ambient=0.12,
                diffuse=0.85,
                specular=0.25,
                specular_power=20,
            )
            entries.append((_display_name(name), color))
        if plane is not None:
            p.add_mesh(
                plane, scalars="hu", cmap="gray", clim=CT_HU_WINDOW, show_scalar_bar=False, lighting=False
            )
        if legend:
            left, top, right, bottom = LEGEND_BOX
            actor = p.add_legend(entries, bcolor=(0.0, 0.0, 0.0), background_opacity=0.55, face="rectangle")
            actor.SetPosition(left, 1.0 - bottom)  # VTK viewport: origin bottom-left
            actor.SetPosition2(right - left, bottom - top)
        if title:
            p.add_text(title, position="upper_edge", font_size=max(6, size[1] // 64), color="white")
        p.enable_parallel_projection()
        self._aim(meshes, plane, size)

    def _aim(
        self, meshes: Mapping[str, pv.PolyData], plane: pv.ImageData | None, size: tuple[int, int]
    ) -> None:
        lo, hi = _bounds(meshes)
        self.center = (lo + hi) / 2
        points = [m.points for m in meshes.values()]
        if plane is not None:
            x0, x1, y0, y1 = plane.bounds[:4]
            points.append(np.array([[x0, y0, 0], [x0, y1, 0], [x1, y0, 0], [x1, y1, 0]]))
        xy = np.concatenate([p[:, :2] for p in points]) - self.center[:2]
        radius_xy = float(np.sqrt((xy**2).sum(axis=1)).max())  # the widest any view of the orbit gets
        half_height = float(hi[2] - lo[2]) / 2
        self.elevation = math.radians(_CT_ELEVATION_DEG if plane is not None else 0.0)
        vertical = half_height * math.cos(self.elevation) + radius_xy * math.sin(self.elevation)
        width, height = size
        self.plotter.camera.parallel_scale = _VIEW_MARGIN * max(vertical, radius_xy * height / width)
        self.distance = 4 * max(radius_xy, half_height, 1.0)

    def frame(self, angle_deg: float) -> np.ndarray:
        """Render the view ``angle_deg`` degrees into the orbit (0 = anterior view) as (H, W, 3) uint8."""
        a, e = math.radians(angle_deg), self.elevation
        direction = np.array([-math.sin(a) * math.cos(e), math.cos(a) * math.cos(e), math.sin(e)])
        camera = self.plotter.camera
        camera.focal_point = tuple(self.center)
        camera.position = tuple(self.center + self.distance * direction)
        camera.up = (0.0, 0.0, 1.0)
        self.plotter.reset_camera_clipping_range()
        self.plotter.render()  # screenshot() renders by itself only the first time
        return np.asarray(self.plotter.screenshot(return_img=True))[..., :3].copy()

    def close(self) -> None:
        self.plotter.close()


@contextmanager
def _scene(*args, **kwargs) -> Iterator[_Scene]:
    scene = _Scene(*args, **kwargs)
    try:
        yield scene
    finally:
        scene.close()


def render_frame(
    meshes: Mapping[str, pv.PolyData],
    angle_deg: float = 0.0,
    *,
    size: tuple[int, int] = (720, 720),
    title: str | None = None,
    ct: str | Path | Volume | None = None,
    legend: bool = True,
) -> np.ndarray:
    """One view of the organs (``build_meshes`` output) as an (H, W, 3) uint8 RGB array.

    ``angle_deg`` is the position on the orbit about the superior axis; 0 is the anterior view (patient's
    right on the viewer's left, head up). ``ct`` adds the axial CT plane beneath the organs.
    """
    plane = ct_plane(ct, meshes) if ct is not None else None
    with _scene(meshes, _check_size(size), title, plane, legend) as scene:
        return scene.frame(angle_deg)


# --------------------------------------------------------------------------------------- outputs


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        width, height = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ConfigError(f"render: size: expected (width, height), got {size!r}") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ConfigError(f"render: size: expected even width and height >= 16 (H.264 yuv420p), got {size!r}")
    return width, height


def _check_options(output: Path, preview: Path | None, frames: int, fps: float) -> None:
    if output.suffix.lower() not in (".mp4", ".png"):
        raise OutputError(f"{output}: unsupported output type, expected .mp4 (video) or .png (still image)")
    if preview is not None and preview.suffix.lower() != ".png":
        raise OutputError(f"{preview}: the preview is a still image, expected a .png path")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ConfigError(f"render: frames: expected an integer >= 1, got {frames!r}")
    if not fps > 0:
        raise ConfigError(f"render: fps: expected a number > 0, got {fps!r}")


def _write_png(frame: np.ndarray, path: Path) -> None:
    iio.imwrite(path, frame, extension=".png")


def render(
    mask: str | Path | Volume,
    output: str | Path,
    *,
    labels: LabelMap = LabelMap(),
    frames: int = 72,
    fps: float = 24,
    size: tuple[int, int] = (720, 720),
    title: str | None = None,
    ct: str | Path | Volume | None = None,
    preview: str | Path | None = None,
    overwrite: bool = True,
    progress: bool = True,
) -> Path:
    """Render a label mask as a rotating MP4 (or, for a ``.png`` output, the still frame 0).

    Args:
        mask: label mask file (NIfTI) or ``Volume``; values follow ``labels`` (0 = background).
        output: ``.mp4`` (H.264, yuv420p, plays everywhere) or ``.png``; written atomically.
        labels: label map giving names and colours (``LabelMap.color_of``).
        frames: frames for one full 360-degree orbit about the superior axis.
        fps: frames per second of the video (72 frames at 24 fps = a 3 s turn).
        size: (width, height) in pixels, both even.
        title: optional text at the top of every frame.
        ct: optional CT (file or ``Volume``) on the same world space: an axial slice, HU window
            -175..250, is drawn beneath the organs at their lowest level.
        preview: optional ``.png`` path for frame 0 (anterior view), like TotalSegmentator's ``--preview``.
        overwrite: replace existing outputs; otherwise an existing output is an ``OutputError``.
        progress: show a progress bar over frames (stderr).

    Returns:
        The output path.

    Raises:
        InputError: missing/unreadable mask or CT, intensity image as mask, mask without organs, CT that
            does not reach the organs.
        OutputError: unsupported suffix, missing folder, existing output without ``overwrite``.
        ConfigError: invalid ``frames``, ``fps`` or ``size``.
    """
    output = Path(output)
    preview = Path(preview) if preview is not None else None
    _check_options(output, preview, frames, fps)
    size = _check_size(size)
    for path in (output, preview):  # fail before minutes of rendering, not after
        if path is not None:
            check_writable(path, overwrite=overwrite)
    mask_volume = _load_volume(mask, "mask")
    meshes = build_meshes(mask_volume, labels)
    plane = ct_plane(ct, meshes) if ct is not None else None
    still = output.suffix.lower() == ".png"
    n_frames = 1 if still else frames
    with ExitStack() as stack:
        scene = stack.enter_context(_scene(meshes, size, title, plane, legend=True))
        out_tmp = stack.enter_context(atomic_path(output, overwrite=overwrite))
        png_tmp = stack.enter_context(atomic_path(preview, overwrite=overwrite)) if preview else None
        writer = None
        if not still:
            writer = imageio_ffmpeg.write_frames(
                str(out_tmp),
                size,
                fps=fps,
                codec="libx264",
                pix_fmt_out="yuv420p",
                quality=None,
                macro_block_size=2,
                output_params=["-crf", str(_CRF), "-preset", "medium", "-movflags", "+faststart"],
            )
            writer.send(None)
            stack.callback(writer.close)  # runs before the temp files are renamed or removed
        for index in tqdm(range(n_frames), desc="render", unit="frame", disable=not progress, leave=False):
            image = scene.frame(360.0 * index / n_frames)
            if index == 0:
                if still:
                    _write_png(image, out_tmp)
                if png_tmp is not None:
                    _write_png(image, png_tmp)
            if writer is not None:
                writer.send(np.ascontiguousarray(image))
    return output
