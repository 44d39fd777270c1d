"""How a phantom looks on CT: per-tissue HU by contrast phase, texture, blur, noise, artefacts.

``render(tissue, spacing_mm, rng, phase)`` turns a tissue map into HU. It is separate from anatomy,
so training can re-draw the appearance of one anatomy many times (contrast phase, kVp, noise,
slice thickness). Ranges are means of a tissue in one scan (HU); each case draws within them:

============== =========== =========== ============ ===========
tissue          noncontrast  arterial    portal       delayed
============== =========== =========== ============ ===========
liver           45..70      60..90      95..135      70..100
spleen          38..55      90..160     100..140     70..100
renal cortex    28..42      150..260    140..220     100..160
aorta           35..55      220..400    140..220     90..130
portal vein     35..55      70..130     140..220     90..130
fat             -120..-80 (all phases); muscle 35..65; cancellous bone 90..300; cortex 700..1300
============== =========== =========== ============ ===========

A fatty liver (12 % of cases, ``info["fatty_liver_hu"]``) is 20..50 HU darker in every phase.
The renal medulla is darker than the cortex in arterial and portal phase (corticomedullary
differentiation) and the collecting system fills with excreted contrast in delayed phase.
``phase="wild"`` draws every tissue independently over all phases (domain randomization).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from organseg.phantom.fields import Grid, SmoothField
from organseg.phantom.tissues import N_TISSUES, Tissue

T = Tissue
PHASES: tuple[str, ...] = ("noncontrast", "arterial", "portal", "delayed")
PHASE_CHOICES: tuple[str, ...] = PHASES + ("random", "wild")
_PHASE_WEIGHTS = np.array([0.25, 0.2, 0.4, 0.15])

#: Tissue mean HU ranges that do not depend on contrast.
STATIC_HU: dict[int, tuple[float, float]] = {
    T.AIR: (-1003, -997),
    T.TABLE_SHELL: (100, 400),
    T.TABLE_FOAM: (-950, -750),
    T.SKIN: (10, 60),
    T.SUBCUT_FAT: (-120, -85),
    T.VISCERAL_FAT: (-115, -80),
    T.RENAL_SINUS_FAT: (-110, -70),
    T.BONE_CORTICAL: (700, 1300),
    T.BONE_CANCELLOUS: (90, 300),
    T.CARTILAGE: (80, 200),
    T.DISC: (70, 110),
    T.CSF: (0, 25),
    T.LUNG: (-890, -800),
    T.LUNG_VESSEL: (20, 60),
    T.GAS: (-1000, -950),
    T.BILE: (0, 20),
    T.KIDNEY_CYST: (0, 15),
    T.BLADDER_URINE: (0, 15),
    T.STOOL: (-40, 50),
    T.METAL: (2500, 3071),
}

#: Tissue mean HU ranges per phase (noncontrast, arterial, portal, delayed).
PHASE_HU: dict[int, tuple[tuple[float, float], ...]] = {
    T.LIVER: ((45, 70), (60, 90), (95, 135), (70, 100)),
    T.SPLEEN: ((38, 55), (90, 160), (100, 140), (70, 100)),
    T.KIDNEY_CORTEX: ((28, 42), (150, 260), (140, 220), (100, 160)),
    T.ARTERIAL_BLOOD: ((35, 55), (220, 400), (140, 220), (90, 130)),
    T.PORTAL_BLOOD: ((35, 55), (70, 130), (140, 220), (90, 130)),
    T.VENOUS_BLOOD: ((35, 55), (60, 120), (110, 180), (90, 130)),
    T.CARDIAC_BLOOD: ((35, 55), (180, 350), (130, 200), (90, 130)),
    T.MYOCARDIUM: ((40, 55), (90, 150), (90, 130), (70, 100)),
    T.PANCREAS: ((35, 50), (100, 160), (80, 120), (60, 90)),
    T.GI_WALL: ((30, 45), (70, 120), (70, 110), (55, 80)),
    T.URINE: ((0, 15), (0, 15), (0, 25), (250, 900)),
    T.MUSCLE: ((35, 60), (40, 65), (45, 70), (45, 65)),
}

#: (low-frequency, mid-frequency) texture amplitude ranges, HU (standard deviation of the field).
TEXTURE_HU: dict[int, tuple[tuple[float, float], tuple[float, float]]] = {
    T.LIVER: ((2, 8), (1, 4)),
    T.SPLEEN: ((2, 6), (2, 6)),
    T.KIDNEY_CORTEX: ((2, 5), (1, 4)),
    T.KIDNEY_MEDULLA: ((2, 5), (2, 6)),
    T.PANCREAS: ((2, 5), (8, 25)),
    T.MUSCLE: ((2, 6), (1, 4)),
    T.SUBCUT_FAT: ((3, 8), (2, 6)),
    T.VISCERAL_FAT: ((3, 8), (2, 8)),
    T.BONE_CANCELLOUS: ((10, 40), (30, 80)),
    T.BONE_CORTICAL: ((20, 80), (20, 80)),
    T.LUNG: ((10, 30), (10, 30)),
    T.STOOL: ((5, 20), (40, 80)),
    T.STOMACH_CONTENT: ((3, 15), (2, 10)),
    T.BOWEL_CONTENT: ((3, 15), (2, 10)),
    T.GI_WALL: ((2, 5), (1, 4)),
    T.VENOUS_BLOOD: ((2, 6), (1, 3)),
    T.LIVER_LESION: ((2, 6), (2, 8)),
}


def _phase_blend(rng: np.random.Generator, phase: str) -> tuple[str, np.ndarray]:
    """Weights over ``PHASES``; ``random`` sometimes lands between two phases (late arterial...)."""
    if phase == "random":
        i = int(rng.choice(4, p=_PHASE_WEIGHTS))
        w = np.zeros(4)
        w[i] = 1.0
        if i > 0 and rng.random() < 0.3:  # drift towards a neighbouring phase
            j = i + 1 if i < 3 and rng.random() < 0.5 else i - 1
            if j > 0:
                t = rng.uniform(0, 0.5)
                w[i], w[j] = 1 - t, t
        return PHASES[i], w
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(PHASE_CHOICES)}")
    w = np.zeros(4)
    w[PHASES.index(phase)] = 1.0
    return phase, w


def draw_tissue_hu(rng: np.random.Generator, phase: str = "random") -> tuple[np.ndarray, dict]:
    """Mean HU of every tissue for one scan: (lut of length N_TISSUES, description)."""
    lut = np.zeros(N_TISSUES, np.float32)
    for t, (lo, hi) in STATIC_HU.items():
        lut[t] = rng.uniform(lo, hi)
    info: dict = {}
    if phase == "wild":
        for t, ranges in PHASE_HU.items():
            lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
            lut[t] = rng.uniform(lo - 0.2 * abs(lo), hi * 1.2)
        lut[T.KIDNEY_MEDULLA] = rng.uniform(20, 250)
        lut[T.LIVER_LESION] = rng.uniform(-10, 200)
        info["phase"] = "wild"
    else:
        name, weights = _phase_blend(rng, phase)
        # one shared quantile: tube voltage, contrast dose and timing brighten all enhancing tissues together
        common = rng.uniform()
        for t, ranges in PHASE_HU.items():
            q = 0.6 * common + 0.4 * rng.uniform()
            values = np.array([lo + q * (hi - lo) for lo, hi in ranges])
            lut[t] = weights @ values
        cortex, native_cortex = lut[T.KIDNEY_CORTEX], np.mean(PHASE_HU[T.KIDNEY_CORTEX][0])
        fraction = weights @ np.array(
            [1.0, rng.uniform(0.2, 0.45), rng.uniform(0.7, 0.9), rng.uniform(1.0, 1.15)]
        )
        lut[T.KIDNEY_MEDULLA] = native_cortex - rng.uniform(0, 8) + fraction * (cortex - native_cortex)
        if rng.random() < 0.12:  # fatty liver
            info["fatty_liver_hu"] = round(float(rng.uniform(20, 50)), 1)
            lut[T.LIVER] -= info["fatty_liver_hu"]
        info.update(
            phase=name,
            phase_weights=[round(float(v), 3) for v in weights],
            enhancement=round(float(common), 3),
        )
        lut[T.LIVER_LESION] = rng.uniform(0, 20) if rng.random() < 0.5 else lut[T.LIVER] - rng.uniform(25, 70)
    contents = {}
    for t, key in ((T.STOMACH_CONTENT, "stomach"), (T.BOWEL_CONTENT, "bowel")):
        kind = rng.choice(["water", "positive", "food"], p=[0.6, 0.25, 0.15])
        lut[t] = {
            "water": rng.uniform(0, 20),
            "positive": rng.uniform(150, 500),
            "food": rng.uniform(20, 60),
        }[kind]
        contents[key] = str(kind)
    info["oral_contrast"] = contents
    return lut, info


def _texture(rng: np.random.Generator, grid: Grid, tissue: np.ndarray, image: np.ndarray) -> None:
    """Add organ-scale and fine-grained texture (smooth random fields scaled per tissue), in place."""
    extent = np.array(grid.spacing_mm) * (np.array(grid.shape) - 1)
    box = grid.full()
    low_amp = np.zeros(N_TISSUES, np.float32)
    mid_amp = np.zeros(N_TISSUES, np.float32)
    for t, ((l0, l1), (m0, m1)) in TEXTURE_HU.items():
        low_amp[t], mid_amp[t] = rng.uniform(l0, l1), rng.uniform(m0, m1)
    low = SmoothField.random(rng, (0, 0, 0), extent, rng.uniform(25, 45))(box)
    image += low * low_amp[tissue]
    mid_step = max(rng.uniform(5, 9), 1.5 * max(grid.spacing_mm))
    mid = SmoothField.random(rng, (0, 0, 0), extent, mid_step)(box)
    image += mid * mid_amp[tissue]
    stool = tissue == T.STOOL
    if stool.any():  # mottled gas bubbles in faeces
        bubbles = stool & (mid > rng.uniform(0.4, 1.2))
        image[bubbles] = rng.uniform(-900, -600)
    bias = rng.uniform(0, 5)  # scanner cupping / inhomogeneity, proportional to density
    image += low * np.float32(bias / 1000) * np.clip(image + 1000, 0, None)


def _blur(image: np.ndarray, sigma_vox) -> np.ndarray:
    for axis, s in enumerate(sigma_vox):
        if s > 0.15:
            image = ndimage.gaussian_filter1d(image, s, axis=axis, mode="nearest")
    return image


def _noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    """Unit-variance noise with the in-plane grain of a reconstruction kernel."""
    n = rng.standard_normal(shape, dtype=np.float32)
    norm = 1.0
    for axis, s in enumerate(sigma_vox):
        if s > 0.15:
            n = ndimage.gaussian_filter1d(n, s, axis=axis, mode="wrap")
            r = int(4 * s + 0.5)
            k = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
            norm *= float(np.sqrt(((k / k.sum()) ** 2).sum()))
    return n / np.float32(norm)


def _streaks(rng: np.random.Generator, grid: Grid, tissue: np.ndarray, image: np.ndarray) -> int:
    """Dark beam-hardening streaks between dense bones, over a few slabs. Returns how many."""
    bone = tissue == T.BONE_CORTICAL
    n = 0
    x, y = grid.axis(0)[:, None], grid.axis(1)[None, :]
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(0, grid.shape[2]))
        pts = np.argwhere(bone[:, :, k])
        if len(pts) < 2:
            continue
        a, b = pts[rng.choice(len(pts), 2, replace=False)]
        pa = np.array([x[a[0], 0], y[0, a[1]]])
        pb = np.array([x[b[0], 0], y[0, b[1]]])
        d = pb - pa
        length = float(np.hypot(*d))
        if length < 30:
            continue
        # distance from the line through the two bones, fading beyond them
        t = ((x - pa[0]) * d[0] + (y - pa[1]) * d[1]) / length**2
        dist = np.abs((x - pa[0]) * d[1] - (y - pa[1]) * d[0]) / length
        profile = np.exp(-0.5 * (dist / rng.uniform(1.5, 4)) ** 2) * np.exp(
            -np.clip(np.abs(t - 0.5) - 0.5, 0, None) * 4
        )
        half = rng.uniform(5, 30) / grid.spacing_mm[2]
        ks = np.arange(max(0, int(k - half)), min(grid.shape[2], int(k + half) + 1))
        taper = np.cos(0.5 * np.pi * (ks - k) / (half + 1)) ** 2
        image[:, :, ks] -= (rng.uniform(20, 80) * profile)[:, :, None] * taper[None, None, :].astype(
            np.float32
        )
        n += 1
    return n


def _metal(rng: np.random.Generator, grid: Grid, tissue: np.ndarray, image: np.ndarray) -> bool:
    """Bright and dark rays fanning out of metal, in the slices that hold it."""
    metal = tissue == T.METAL
    slices = np.flatnonzero(metal.any(axis=(0, 1)))
    if slices.size == 0:
        return False
    x, y = grid.axis(0)[:, None], grid.axis(1)[None, :]
    n_rays = int(rng.integers(6, 16))
    phases, amps = rng.uniform(0, 2 * np.pi, 3), rng.uniform(100, 400)
    for k in slices:
        c = np.argwhere(metal[:, :, k]).mean(axis=0)
        cx, cy = grid.origin_mm[0] + c[0] * grid.spacing_mm[0], grid.origin_mm[1] + c[1] * grid.spacing_mm[1]
        theta = np.arctan2(y - cy, x - cx)
        r = np.hypot(x - cx, y - cy)
        rays = np.cos(n_rays * theta + phases[0]) + 0.5 * np.cos(2 * n_rays * theta + phases[1])
        image[:, :, k] += (amps * rays * np.exp(-r / 60.0)).astype(np.float32)
    return True


def render(
    tissue: np.ndarray,
    spacing_mm,
    rng: np.random.Generator,
    phase: str = "random",
    *,
    noise_sd_hu: float | None = None,
    thickness_mm: float | None = None,
    artefacts: bool = True,
    fixed_hu: dict[int, float] | None = None,
) -> tuple[np.ndarray, dict]:
    """CT intensities (float32 HU, same shape as ``tissue``) and what was drawn.

    Args:
        tissue: uint8 ``Tissue`` map, index order (x, y, z) on a grid with ``spacing_mm`` (x, y, z).
        rng: the appearance's own generator (independent of the anatomy's).
        phase: one of ``PHASE_CHOICES``.
        noise_sd_hu: image noise standard deviation; default drawn log-uniformly in 5..40 HU.
        thickness_mm: reconstructed slice thickness (FWHM of the slice profile); default drawn
            between 0.8x and 1.5x the slice spacing, within 0.6..5 mm.
        artefacts: allow beam-hardening streaks, metal streaks, rings and padding outside the
            reconstruction circle (each drawn with a small probability).
        fixed_hu: mean HU of tissues drawn elsewhere (``Tissue.ORAL_CONTRAST`` by ``variants``; 300 HU
            when not given); setting them takes nothing from ``rng``, so the rest of the look is unchanged.
    """
    spacing = tuple(float(s) for s in spacing_mm)
    grid = Grid((0.0, 0.0, 0.0), spacing, tuple(tissue.shape))
    lut, info = draw_tissue_hu(rng, phase)
    lut[T.ORAL_CONTRAST] = 300.0
    for t, hu in (fixed_hu or {}).items():
        lut[int(t)] = hu
    image = lut[tissue]
    _texture(rng, grid, tissue, image)
    if thickness_mm is None:
        thickness_mm = float(np.clip(spacing[2] * rng.uniform(0.8, 1.5), 0.6, 5.0))
    psf_mm = rng.uniform(0.25, 0.5)  # in-plane point spread (sd)
    # blur = scanner point spread + partial volume of the voxel (a box of one voxel has sd = size / sqrt(12))
    sd_xy = [np.sqrt(psf_mm**2 + s**2 / 12) / s for s in spacing[:2]]
    sd_z = np.sqrt((thickness_mm / 2.355) ** 2 + spacing[2] ** 2 / 12) / spacing[2]
    image = _blur(image, [*sd_xy, sd_z])
    if noise_sd_hu is None:
        noise_sd_hu = float(np.exp(rng.uniform(np.log(5), np.log(40))))
    grain_mm = rng.uniform(0.4, 1.2)
    image += np.float32(noise_sd_hu) * _noise(
        rng, image.shape, [grain_mm / spacing[0], grain_mm / spacing[1], 0]
    )
    info.update(noise_sd_hu=round(noise_sd_hu, 2), thickness_mm=round(thickness_mm, 2))
    if artefacts:
        if rng.random() < 0.25:
            info["streaks"] = _streaks(rng, grid, tissue, image)
        info["metal"] = _metal(rng, grid, tissue, image)
        if rng.random() < 0.03:
            x, y = grid.axis(0) - grid.axis(0).mean(), grid.axis(1) - grid.axis(1).mean()
            r = np.hypot(x[:, None], y[None, :])
            ring = (
                np.exp(-0.5 * ((r - rng.uniform(20, 150)) / 1.0) ** 2)
                * rng.choice([-1, 1])
                * rng.uniform(10, 30)
            )
            image += ring[:, :, None].astype(np.float32)
            info["ring"] = True
        if rng.random() < 0.15:  # scanners pad outside the reconstruction circle
            x, y = grid.axis(0) - grid.axis(0).mean(), grid.axis(1) - grid.axis(1).mean()
            radius = min(x.max(), y.max()) * rng.uniform(0.95, 1.1)
            outside = (np.hypot(x[:, None], y[None, :]) > radius)[:, :, None]
            # the reconstruction circle holds the patient: only air and table are ever padded
            outside = outside & ((tissue == T.AIR) | (tissue == T.TABLE_SHELL) | (tissue == T.TABLE_FOAM))
            image[outside] = float(rng.choice([-1024, -2048, -3024]))
            info["padding"] = True
    return image, info
