"""Geometry primitives for the phantom: grids, sub-boxes, smooth random fields, rotations, capsules.

Everything here works in the **patient frame**: millimetres along RAS axes (+x patient right,
+y anterior, +z superior), origin at the centre of the L1 vertebral body. A ``Grid`` is axis-aligned
with that frame, so a shape is evaluated only on the ``Box`` of voxels around it, using broadcast
1D coordinate vectors (x as (n,1,1), y as (1,n,1), z as (1,1,n)) instead of full 3D meshes.

Random smooth fields (``SmoothField``) are cubic B-splines over a lattice of random coefficients
fixed in patient millimetres, so the same anatomy rasterizes identically (up to sampling) on any
grid. They are evaluated as a tensor product (three small matrix products), which costs a few
flops per voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Standard deviation of a cubic B-spline field with unit-variance coefficients (0.479 ** 1.5).
_BSPLINE_SD = float((151.0 / 315.0) ** 1.5)


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid: voxel (i, j, k) has its centre at ``origin_mm + (i, j, k) * spacing_mm``.

    Attributes:
        origin_mm: patient-frame position (x, y, z) of voxel (0, 0, 0), mm.
        spacing_mm: voxel size along x, y, z, mm.
        shape: voxels along x, y, z.
    """

    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]

    def axis(self, d: int) -> np.ndarray:
        return (self.origin_mm[d] + self.spacing_mm[d] * np.arange(self.shape[d])).astype(np.float32)

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    def full(self) -> Box:
        return Box(tuple(slice(0, n) for n in self.shape), *(self.axis(d) for d in range(3)))

    def box(self, lo_mm, hi_mm) -> Box | None:
        """The voxels whose centres lie in the patient-frame box [lo_mm, hi_mm]; None when empty."""
        slices, coords = [], []
        for d in range(3):
            o, s, n = self.origin_mm[d], self.spacing_mm[d], self.shape[d]
            i0 = max(int(np.ceil((lo_mm[d] - o) / s)), 0)
            i1 = min(int(np.floor((hi_mm[d] - o) / s)) + 1, n)
            if i1 <= i0:
                return None
            slices.append(slice(i0, i1))
            coords.append((o + s * np.arange(i0, i1)).astype(np.float32))
        return Box(tuple(slices), *coords)


class Box:
    """A rectangular block of a grid: its slices and its voxel-centre coordinates (mm) per axis."""

    def __init__(self, slices: tuple[slice, ...], x: np.ndarray, y: np.ndarray, z: np.ndarray):
        self.slices = slices
        self.x1, self.y1, self.z1 = x, y, z
        self.X = x[:, None, None]
        self.Y = y[None, :, None]
        self.Z = z[None, None, :]
        self.shape = (len(x), len(y), len(z))


#: Shapes and smooth fields are evaluated on a lattice no finer than this and upsampled linearly.
COARSE_MM = 1.6


def coarse_box(box: Box, step_mm: float = COARSE_MM, axes=(0, 1, 2)) -> Box | None:
    """A box covering ``box`` with voxels at least ``step_mm`` apart along ``axes``; None if not coarser."""
    coords, coarser = [], False
    for d, c in enumerate((box.x1, box.y1, box.z1)):
        step = float(c[1] - c[0]) if len(c) > 1 else step_mm
        if d in axes and len(c) > 3 and step < 0.75 * step_mm:
            n = int(np.ceil((c[-1] - c[0]) / step_mm)) + 1
            coords.append((c[0] + (c[-1] - c[0]) * np.linspace(0, 1, n)).astype(np.float32))
            coarser = True
        else:
            coords.append(c)
    return Box(box.slices, *coords) if coarser else None


def upsample(values: np.ndarray, src: Box, dst: Box) -> np.ndarray:
    """Separable linear interpolation of ``values`` (on ``src`` coordinates) to ``dst`` coordinates."""
    out = np.asarray(values, np.float32)
    for axis, (a, b) in enumerate(zip((src.x1, src.y1, src.z1), (dst.x1, dst.y1, dst.z1))):
        if len(a) == len(b) and np.array_equal(a, b):
            continue
        t = np.clip((b.astype(np.float64) - a[0]) / (float(a[1]) - float(a[0])), 0, len(a) - 1)
        i0 = np.minimum(np.floor(t).astype(np.intp), len(a) - 2)
        shape = [1, 1, 1]
        shape[axis] = -1
        w = np.clip(t - i0, 0, 1).astype(np.float32).reshape(shape)
        step = np.diff(out, axis=axis)  # on the small array: one gather less per output voxel
        result = np.take(step, i0, axis=axis)
        result *= w
        result += np.take(out, i0, axis=axis)
        out = result
    return out


def shrink_box(box: Box, mask: np.ndarray) -> Box | None:
    """The smallest sub-box of ``box`` holding every True voxel of ``mask`` (box-shaped); None if none."""
    idx = []
    for d in range(3):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != d)))
        if hit.size == 0:
            return None
        idx.append((int(hit[0]), int(hit[-1]) + 1))
    slices = tuple(slice(s.start + i0, s.start + i1) for s, (i0, i1) in zip(box.slices, idx))
    coords = [c[i0:i1] for c, (i0, i1) in zip((box.x1, box.y1, box.z1), idx)]
    return Box(slices, *coords)


def box_around(grid: Grid, center, half_size) -> Box | None:
    c = np.asarray(center, float)
    h = np.broadcast_to(np.asarray(half_size, float), (3,))
    return grid.box(c - h, c + h)


# --------------------------------------------------------------------------------------- smooth fields


def _bspline_weights(coords: np.ndarray, origin: float, step: float, n: int) -> np.ndarray:
    """(len(coords), n) cubic B-spline weights of lattice points origin + a * step."""
    t = (coords.astype(np.float32)[:, None] - origin) / step - np.arange(n, dtype=np.float32)[None, :]
    a = np.abs(t)
    w = np.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, np.where(a < 2, (2 - a) ** 3 / 6, 0))
    return w.astype(np.float32)


@dataclass(frozen=True)
class SmoothField:
    """A random smooth scalar field with unit standard deviation and correlation length ~``step_mm``.

    Attributes:
        origin_mm: patient-frame position of lattice point (0, 0, 0).
        step_mm: lattice spacing (larger = smoother), mm.
        coeffs: lattice coefficients, shape (na, nb, nc) or (k, na, nb, nc) for k fields at once.
    """

    origin_mm: tuple[float, float, float]
    step_mm: float
    coeffs: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, lo_mm, hi_mm, step_mm: float, k: int = 0) -> SmoothField:
        """A field covering the patient-frame box [lo_mm, hi_mm] (``k`` > 0: k independent fields)."""
        lo = np.asarray(lo_mm, float) - 2 * step_mm
        n = np.ceil((np.asarray(hi_mm, float) + 2 * step_mm - lo) / step_mm).astype(int) + 1
        shape = (k, *n) if k else tuple(n)
        coeffs = (rng.standard_normal(shape) / _BSPLINE_SD).astype(np.float32)
        return cls(tuple(float(v) for v in lo), float(step_mm), coeffs)

    def __call__(self, box: Box) -> np.ndarray:
        """Field values on ``box``: shape box.shape, or (k, *box.shape)."""
        coarse = coarse_box(box, max(COARSE_MM, self.step_mm / 4))
        if coarse is not None:
            values = self._evaluate(coarse)
            if values.ndim == 3:
                return upsample(values, coarse, box)
            return np.stack([upsample(v, coarse, box) for v in values])
        return self._evaluate(box)

    def _evaluate(self, box: Box) -> np.ndarray:
        c = self.coeffs if self.coeffs.ndim == 4 else self.coeffs[None]
        weights, window = [], []
        for d, coords in enumerate((box.x1, box.y1, box.z1)):
            # only lattice points within 2 steps of the box carry weight: slice them out
            n = c.shape[d + 1]
            a0 = int(np.clip(np.floor((coords[0] - self.origin_mm[d]) / self.step_mm) - 2, 0, n))
            a1 = int(np.clip(np.ceil((coords[-1] - self.origin_mm[d]) / self.step_mm) + 3, a0, n))
            weights.append(
                _bspline_weights(coords, self.origin_mm[d] + a0 * self.step_mm, self.step_mm, a1 - a0)
            )
            window.append(slice(a0, a1))
        c = c[:, window[0], window[1], window[2]]
        wx, wy, wz = weights
        out = np.tensordot(c, wx, axes=([1], [1]))  # (k, nb, nc, nx)
        out = np.tensordot(out, wy, axes=([1], [1]))  # (k, nc, nx, ny)
        out = np.tensordot(out, wz, axes=([1], [1]))  # (k, nx, ny, nz)
        out = np.ascontiguousarray(out, dtype=np.float32)
        return out if self.coeffs.ndim == 4 else out[0]


@dataclass(frozen=True)
class Warp:
    """A smooth random displacement field (mm) applied to coordinates before a shape is evaluated."""

    field: SmoothField
    amplitude_mm: float

    @classmethod
    def random(cls, rng, center, radius_mm, step_mm: float, amplitude_mm: float) -> Warp:
        c = np.asarray(center, float)
        return cls(SmoothField.random(rng, c - radius_mm, c + radius_mm, step_mm, k=3), float(amplitude_mm))

    def __call__(self, box: Box) -> np.ndarray:
        return self.field(box) * np.float32(self.amplitude_mm)


# --------------------------------------------------------------------------------------- rotations


def rotation(rx_deg: float = 0.0, ry_deg: float = 0.0, rz_deg: float = 0.0) -> np.ndarray:
    """3x3 rotation: about x, then y, then z (degrees); columns are the rotated local axes."""
    ax, ay, az = np.deg2rad([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def mirror_x(side: float) -> np.ndarray:
    """Reflection that maps a right-side (+x) template to ``side`` (+1 right, -1 left)."""
    return np.diag([float(np.sign(side)), 1.0, 1.0])


def ellipsoid_half_extent(axes: np.ndarray, semi_axes) -> np.ndarray:
    """Half-extent (x, y, z) mm of an ellipsoid with the given local axes (columns) and semi-axes."""
    return np.sqrt((np.asarray(axes) ** 2) @ (np.asarray(semi_axes, float) ** 2))


def local_coords(box: Box, center, axes: np.ndarray, warp: Warp | None = None):
    """Coordinates (u, v, w) of the box voxels in a local frame (mm).

    ``axes`` is 3x3 with the local unit axes as columns, in patient coordinates; ``warp`` displaces
    the sampling points first (a smooth random deformation of the shape).
    """
    px, py, pz = box.X - np.float32(center[0]), box.Y - np.float32(center[1]), box.Z - np.float32(center[2])
    if warp is not None:
        d = warp(box)
        px, py, pz = px + d[0], py + d[1], pz + d[2]
    a = axes.astype(np.float32)
    u = a[0, 0] * px + a[1, 0] * py + a[2, 0] * pz
    v = a[0, 1] * px + a[1, 1] * py + a[2, 1] * pz
    w = a[0, 2] * px + a[1, 2] * py + a[2, 2] * pz
    return u, v, w


def ellipsoid(u, v, w, a: float, b: float, c: float):
    """Squared normalized radius: < 1 inside the ellipsoid with semi-axes a, b, c (mm)."""
    return (u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2 + (w / np.float32(c)) ** 2


def smooth_min(f, g, k: float):
    """Polynomial smooth minimum (soft union of two implicit shapes), blend width ``k``."""
    h = np.clip(0.5 + 0.5 * (g - f) / k, 0.0, 1.0)
    return g + (f - g) * h - k * h * (1 - h)


# --------------------------------------------------------------------------------------- capsules


def capsule(box: Box, a, b, ra: float, rb: float):
    """Distance of box voxels to segment a-b, divided by the radius interpolated along it.

    Returns (q, t): q < 1 inside the tapered capsule; t in [0, 1] is the position along the segment.
    """
    a = np.asarray(a, np.float32)
    ab = np.asarray(b, np.float32) - a
    length2 = max(float(ab @ ab), 1e-6)
    px, py, pz = box.X - a[0], box.Y - a[1], box.Z - a[2]
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / np.float32(length2), 0.0, 1.0)
    dx, dy, dz = px - t * ab[0], py - t * ab[1], pz - t * ab[2]
    r = np.float32(ra) + t * np.float32(rb - ra)
    return np.sqrt(dx * dx + dy * dy + dz * dz) / r, t


def resample_polyline(points, radii, step_mm: float):
    """Densify a polyline (m, 3) with radii (m,) to segments no longer than ``step_mm`` (linear)."""
    points = np.asarray(points, float)
    radii = np.asarray(radii, float)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(np.ceil(s[-1] / step_mm)) + 1, 2)
    t = np.linspace(0, s[-1], n)
    out = np.stack([np.interp(t, s, points[:, d]) for d in range(3)], axis=1)
    return out, np.interp(t, s, radii), t


def smooth_polyline(points, passes: int = 2):
    """Chaikin corner cutting: a rounder path through the same region (end points kept)."""
    p = np.asarray(points, float)
    for _ in range(passes):
        q = 0.75 * p[:-1] + 0.25 * p[1:]
        r = 0.25 * p[:-1] + 0.75 * p[1:]
        p = np.concatenate([p[:1], np.stack([q, r], axis=1).reshape(-1, p.shape[1]), p[-1:]])
    return p
