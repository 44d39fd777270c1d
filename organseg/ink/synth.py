"""Synthetic papyrus fragments in the competition's layout, for tests, the demo and benchmarks.

What is simulated (all sizes in pixels / slices; slices are 0..64 along the x-ray depth axis):

- a papyrus **sheet** whose top surface is warped (smooth height field, several slices of relief)
  and whose thickness varies; two fibre layers (horizontal fibres on top, vertical below), each an
  anisotropically filtered noise texture; density drifts slowly across the fragment;
- **ink**: handwritten-looking strokes (rows of glyphs made of curved strokes) that add a faint
  density change in the 1-3 slices just *under* the warped surface, so ink never sits in one fixed
  slice; in the realistic level its strength fades along the strokes;
- **damage**: a jagged outline (``mask.png``), holes, and thin cracks through the sheet;
- **acquisition**: per-voxel noise and an in-plane blur; 16-bit slices ``00.tif`` .. ``64.tif``;
- ``ir.png``: the surface photographed in infrared, where ink is darker (consistent with the labels).

``easy`` has little relief and strong ink; ``realistic`` has a relief of about +-10 slices, ink a
few per cent of the fibre texture's contrast, more noise and damage: a threshold on any fixed slice
is then close to chance (measured in BENCHMARKS.md), while a model that follows the surface is not.
The same seed gives the same fragment, bit for bit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from organseg.errors import OutputError
from organseg.ink.reader import N_SLICES


@dataclass(frozen=True)
class Difficulty:
    """Knobs of one difficulty level (slices for depths, fractions of papyrus density for contrasts)."""

    relief: float  # std of the surface height field, slices
    fine_relief: float  # std of the small-scale relief, slices
    thickness: tuple[float, float]  # mean and std of the sheet thickness, slices
    ink: float  # ink density change, fraction of papyrus density
    ink_fade: float  # 0: uniform ink; 1: strength varies from 0 to full along strokes
    fibre: float  # std of the fibre texture, fraction of papyrus density
    drift: float  # std of slow density drift across the fragment, fraction
    noise: float  # per-voxel noise std, fraction of papyrus density
    blur: float  # in-plane gaussian blur sigma, pixels
    holes: int  # holes per megapixel
    cracks: int  # cracks per megapixel
    stroke_px: float  # stroke half-width, pixels


LEVELS: dict[str, Difficulty] = {
    "easy": Difficulty(1.0, 0.3, (14.0, 1.0), 0.30, 0.0, 0.06, 0.03, 0.03, 0.6, 4, 4, 3.5),
    "realistic": Difficulty(4.0, 1.0, (12.0, 3.0), 0.10, 0.6, 0.10, 0.12, 0.08, 1.0, 12, 24, 2.5),
}

SURFACE_SLICE = 32.0  # where the surface sits on average (the middle of 65 slices)
AIR = 9000.0  # uint16 level of air
PAPYRUS = 30000.0  # uint16 level of dry papyrus


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Zero-mean, unit-std random field varying on a scale of ``cell_px`` pixels (cubic upsampling)."""
    h, w = shape
    gh, gw = int(np.ceil(h / cell_px)) + 3, int(np.ceil(w / cell_px)) + 3
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    up = ndimage.zoom(coarse, (cell_px, cell_px), order=3, output=np.float32, prefilter=True)
    oy, ox = int(cell_px), int(cell_px)
    field = up[oy : oy + h, ox : ox + w]
    field = field - field.mean()
    return field / (field.std() + 1e-6)


def fibre_texture(rng: np.random.Generator, shape: tuple[int, int], along_rows: bool) -> np.ndarray:
    """Papyrus fibres: noise stretched along one axis (rows = horizontal fibres), unit std."""
    noise = rng.standard_normal(shape).astype(np.float32)
    sigma = (0.8, 10.0) if along_rows else (10.0, 0.8)
    tex = ndimage.gaussian_filter(noise, sigma, truncate=2.5)
    tex += (
        0.5
        * ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3.0, truncate=2.0)
        * tex.std()
        / 0.1
    )
    return (tex - tex.mean()) / (tex.std() + 1e-6)


def draw_text(rng: np.random.Generator, shape: tuple[int, int], stroke_px: float) -> np.ndarray:
    """Rows of glyphs made of curved strokes, as a bool (rows, columns) image: the ink."""
    h, w = shape
    glyph = max(12, int(round(stroke_px * 9)))
    skeleton = np.zeros(shape, dtype=bool)
    y = int(glyph * rng.uniform(0.6, 1.2))
    while y + glyph < h:
        x = int(glyph * rng.uniform(0.3, 1.0))
        while x + glyph < w:
            if rng.random() < 0.15:  # a space between words
                x += glyph
                continue
            for _ in range(int(rng.integers(2, 5))):
                p = rng.uniform(0, glyph, size=(3, 2)) + (y, x)
                tt = np.linspace(0, 1, glyph * 2)[:, None]
                curve = (1 - tt) ** 2 * p[0] + 2 * (1 - tt) * tt * p[1] + tt**2 * p[2]
                r = np.clip(np.round(curve[:, 0]).astype(int), 0, h - 1)
                c = np.clip(np.round(curve[:, 1]).astype(int), 0, w - 1)
                skeleton[r, c] = True
            x += int(glyph * rng.uniform(1.0, 1.4))
        y += int(glyph * rng.uniform(1.5, 2.0))
    dist = ndimage.distance_transform_edt(~skeleton)
    return dist <= stroke_px


def jagged_mask(
    rng: np.random.Generator, shape: tuple[int, int], level: Difficulty
) -> tuple[np.ndarray, np.ndarray]:
    """The fragment outline with holes (``mask``) and the sheet itself, minus thin cracks (``solid``)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ell = ((yy - h / 2) / (h * 0.47)) ** 2 + ((xx - w / 2) / (w * 0.47)) ** 2
    rough = 0.12 * smooth_field(rng, shape, max(h, w) / 6) + 0.04 * smooth_field(rng, shape, 12)
    mask = ell + rough < 1.0
    mp = h * w / 1e6
    del yy, xx
    for _ in range(rng.poisson(level.holes * mp)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 14)
        aspect = rng.uniform(0.5, 2)
        r0, r1 = (
            max(0, int(cy - r) - 1),
            min(h, int(cy + r) + 2),
        )  # only the hole's box: fast on big fragments
        c0, c1 = max(0, int(cx - r / np.sqrt(aspect)) - 1), min(w, int(cx + r / np.sqrt(aspect)) + 2)
        by, bx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        mask[r0:r1, c0:c1] &= (by - cy) ** 2 + (bx - cx) ** 2 * aspect > r * r
    cracks = np.zeros(shape, dtype=bool)
    for _ in range(rng.poisson(level.cracks * mp)):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        angle = rng.uniform(0, np.pi)
        for _ in range(int(rng.integers(30, 200))):
            angle += rng.normal(0, 0.3)
            y, x = y + np.sin(angle), x + np.cos(angle)
            if 0 <= y < h and 0 <= x < w:
                cracks[int(y), int(x)] = True
    cracks = ndimage.binary_dilation(cracks, iterations=1)
    largest = ndimage.label(mask)[0]
    sizes = np.bincount(largest.ravel())
    sizes[0] = 0
    mask = largest == int(np.argmax(sizes))
    return mask, mask & ~cracks


def synth_fragment(
    out_dir: str | Path,
    seed: int,
    height: int = 512,
    width: int = 384,
    difficulty: str = "realistic",
    labels: bool = True,
    compress: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    ink_signal: bool = True,
) -> Path:
    """Write one synthetic fragment folder (``surface_volume/``, ``mask.png``, ``inklabels.png``, ``ir.png``).

    Args:
        out_dir: the fragment folder to create (written beside as a temporary folder, then renamed).
        seed: the same seed (and size and level) gives the same fragment.
        height, width: rows and columns of every slice.
        difficulty: ``easy`` or ``realistic`` (``LEVELS``).
        labels: write ``inklabels.png`` (False makes a test fragment).
        compress: write zlib-compressed TIFF strips (smaller, slower) instead of raw ones.
        ink_signal: False leaves the ink out of the volume (labels and everything else unchanged):
            a null control, and a way to see exactly where the ink signal sits.
    Memory is a few float32 (rows, columns) fields plus one slice at a time, never the volume.
    """
    import tifffile
    from PIL import Image

    out = Path(out_dir)
    level = LEVELS[difficulty]
    if out.exists():
        if not overwrite:
            raise OutputError(f"{out}: already exists (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise OutputError(f"{out}: output folder {out.parent} does not exist")
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "surface_volume").mkdir(parents=True)
    rng = np.random.default_rng([int(seed), height, width, list(LEVELS).index(difficulty)])
    shape = (height, width)
    try:
        mask, solid = jagged_mask(rng, shape, level)
        surface = (
            SURFACE_SLICE
            + level.relief * smooth_field(rng, shape, 160)
            + level.fine_relief * smooth_field(rng, shape, 24)
        )
        np.clip(surface, 20, 44, out=surface)
        thick = level.thickness[0] + level.thickness[1] * smooth_field(rng, shape, 96)
        np.clip(thick, 5, 20, out=thick)
        density = PAPYRUS * (1 + level.drift * smooth_field(rng, shape, 128))
        fib_top = level.fibre * fibre_texture(rng, shape, along_rows=True)
        fib_low = level.fibre * fibre_texture(rng, shape, along_rows=False)
        ink = draw_text(rng, shape, level.stroke_px)
        strength = 1 - level.ink_fade * (0.5 + 0.5 * np.clip(smooth_field(rng, shape, 20), -1, 1))
        ink_amp = (level.ink * ink * strength).astype(np.float32)
        ink_amp = ndimage.gaussian_filter(ink_amp, 0.7)
        ink_amp *= float(ink_signal)
        ink_depth = 1.5 + 0.5 * smooth_field(rng, shape, 64)
        solid_f = ndimage.gaussian_filter(solid.astype(np.float32), 0.7)
        noise_rng = np.random.default_rng([int(seed), 7919])
        names = range(N_SLICES)
        for z in tqdm(names, desc=f"synth {out.name}", unit="slice", disable=not progress, leave=False):
            d = z - surface  # depth below the surface, slices
            occ = np.clip(d + 0.5, 0, 1) * np.clip(thick - d + 0.5, 0, 1) * solid_f
            fibre = np.where(d < thick / 2, fib_top, fib_low)
            under = np.exp(-(((d - ink_depth) / 1.0) ** 2))
            dens = AIR + occ * (density * (1 + fibre + ink_amp * under) - AIR)
            dens += noise_rng.standard_normal(shape, dtype=np.float32) * (level.noise * PAPYRUS)
            dens = ndimage.gaussian_filter(dens, level.blur, truncate=2.5)
            sl = np.clip(dens, 0, 65535).astype(np.uint16)
            tifffile.imwrite(
                tmp / "surface_volume" / f"{z:02d}.tif",
                sl,
                compression="zlib" if compress else None,
                rowsperstrip=64 if compress else None,
                metadata=None,
            )
        Image.fromarray((mask * 255).astype(np.uint8), mode="L").save(tmp / "mask.png")
        if labels:
            Image.fromarray(((ink & mask) * 255).astype(np.uint8), mode="L").save(tmp / "inklabels.png")
        ir = (
            150
            + 30 * fib_top / max(level.fibre, 1e-6) * 0.3
            - 90 * (ink * strength)
            + rng.normal(0, 6, shape)
        )
        ir = ndimage.gaussian_filter(ir, 1.0) * mask + 20 * ~mask
        Image.fromarray(np.clip(ir, 0, 255).astype(np.uint8), mode="L").save(tmp / "ir.png")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def synthesize_fragments(
    out_dir: str | Path,
    n: int = 3,
    seed: int = 0,
    height: int = 512,
    width: int = 384,
    difficulty: str = "realistic",
    labels: bool = True,
    compress: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """``n`` fragments ``out_dir/1 .. n`` (the competition numbers fragments from 1), seeds ``seed + i``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file, expected a folder")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(n), desc="fragments", disable=not progress or n == 1):
        paths.append(
            synth_fragment(
                out / str(i + 1), seed + i, height, width, difficulty, labels, compress, overwrite, progress
            )
        )
    return paths
