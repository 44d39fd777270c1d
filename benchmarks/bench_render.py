"""Benchmark ``organseg.rendering``: wall time and peak memory for a real and a large synthetic mask.

Each case runs in a fresh Python process so its peak resident memory (``ru_maxrss``) is its own:

* ``real``: the TotalSegmentator example mask (122x101x30 at 3 mm), remapped to organseg labels;
* ``synthetic``: a 512x512x300 mask at 0.78x0.78x1.5 mm with four lumpy organs (liver about 1.8 l),
  the size of a typical abdominal CT;
* ``thick``: real anatomy with thick slices -- the four organs of TotalSegmentator subject s0011
  (``../shared/data/anatomy``, 1.5 mm) resampled (nearest) onto a 0.8x0.8x2.5 mm grid, 383x272x93.

Before/after a change to the renderer: run once with the old package first on the path
(``PYTHONPATH=/path/to/old/checkout``; the child processes inherit it) and once without.

Run from the repository root::

    python benchmarks/bench_render.py                    # 720x720, 72 frames, appends to BENCHMARKS.md
    python benchmarks/bench_render.py --frames 12 --no-record

Prints a table and appends a dated section (command, machine, table) to ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
REAL_SEG = REPO.parent / "shared" / "data" / "totalseg-example" / "seg_totalsegmentator.nii.gz"
ANATOMY = REPO.parent / "shared" / "data" / "anatomy" / "totalseg-s0011" / "labels.nii.gz"
THICK_SPACING_MM = (0.8, 0.8, 2.5)
TOTALSEG_TO_ORGANSEG = {1: 4, 2: 2, 3: 3, 5: 1}  # spleen, kidney_right, kidney_left, liver
SYNTH_SHAPE = (512, 512, 300)
SYNTH_SPACING_MM = (0.78, 0.78, 1.5)
# label: centre (mm from the volume centre, RAS) and radii (mm)
SYNTH_ORGANS = {
    1: ((60.0, 10.0, 40.0), (85.0, 75.0, 70.0)),
    2: ((70.0, -55.0, -45.0), (28.0, 32.0, 55.0)),
    3: ((-70.0, -55.0, -40.0), (28.0, 32.0, 55.0)),
    4: ((-85.0, -35.0, 45.0), (40.0, 55.0, 55.0)),
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_real(path: Path) -> None:
    import nibabel as nib

    img = nib.load(str(REAL_SEG))
    src = np.asarray(img.dataobj)
    mask = np.zeros(src.shape, np.uint8)
    for ts_id, ours in TOTALSEG_TO_ORGANSEG.items():
        mask[src == ts_id] = ours
    nib.save(nib.Nifti1Image(mask, img.affine), str(path))


def make_thick(path: Path) -> None:
    """s0011's liver, kidneys and spleen, cropped (1.5 cm margin) and resampled nearest to 0.8x0.8x2.5 mm."""
    import nibabel as nib
    from scipy import ndimage

    img = nib.load(str(ANATOMY))
    lut = np.zeros(256, np.uint8)
    for ts_id, ours in TOTALSEG_TO_ORGANSEG.items():
        lut[ts_id] = ours
    src = lut[np.asarray(img.dataobj)]
    box = ndimage.find_objects((src > 0).astype(np.uint8))[0]
    lo = [max(0, b.start - 10) for b in box]
    hi = [min(n, b.stop + 10) for b, n in zip(box, src.shape, strict=True)]
    src = src[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    target = np.array(THICK_SPACING_MM)
    shape = np.floor((np.array(src.shape) - 1) * spacing / target).astype(int) + 1
    index = np.meshgrid(*[np.arange(n) * t / s for n, t, s in zip(shape, target, spacing, strict=True)],
                        indexing="ij", sparse=True)  # fmt: skip
    mask = src[
        tuple(np.clip(np.round(c).astype(int), 0, n - 1) for c, n in zip(index, src.shape, strict=True))
    ]
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array(lo) + img.affine[:3, 3]
    affine[:3, :3] = img.affine[:3, :3] @ np.diag(target / spacing)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(path))


def make_synthetic(path: Path) -> None:
    """Lumpy ellipsoids, each computed on its own bounding box so the generator stays small in memory."""
    import nibabel as nib

    affine = np.diag([*SYNTH_SPACING_MM, 1.0])
    spacing = np.array(SYNTH_SPACING_MM)
    affine[:3, 3] = -(np.array(SYNTH_SHAPE) - 1) / 2 * spacing  # volume centre at world 0
    mask = np.zeros(SYNTH_SHAPE, np.uint8)
    for value, (centre, radii) in SYNTH_ORGANS.items():
        c_vox = (np.array(centre) - affine[:3, 3]) / spacing
        r_vox = np.array(radii) * 1.15 / spacing
        lo = np.maximum(np.floor(c_vox - r_vox).astype(int), 0)
        hi = np.minimum(np.ceil(c_vox + r_vox).astype(int) + 1, SYNTH_SHAPE)
        grids = np.meshgrid(
            *[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij", sparse=True
        )
        x, y, z = (
            (g * s + o - c) / r
            for g, s, o, c, r in zip(grids, spacing, affine[:3, 3], centre, radii, strict=True)
        )
        lumps = 1 + 0.08 * np.sin(5 * x + 1) * np.sin(4 * y) + 0.06 * np.sin(6 * z + value)
        inside = x**2 + y**2 + z**2 < lumps**2
        crop = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        crop[inside] = value
    nib.save(nib.Nifti1Image(mask, affine), str(path))


def run_case(mask_path: Path, frames: int, size: int, out_dir: Path) -> dict:
    """Render one mask (in this process) and measure it; the mesh step is timed again on its own."""
    import pyvista as pv

    from organseg.io import read_nifti
    from organseg.rendering import build_meshes, render

    out = out_dir / f"{mask_path.name.split('.')[0]}.mp4"
    start = time.perf_counter()
    render(mask_path, out, frames=frames, size=(size, size), progress=False)
    total_s = time.perf_counter() - start
    own, ffmpeg = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU includes imports and the ffmpeg encoder process; unlike wall time, other load does not inflate it
    cpu_s = own.ru_utime + own.ru_stime + ffmpeg.ru_utime + ffmpeg.ru_stime
    peak_mb = _peak_rss_mb()
    start = time.perf_counter()
    vol = read_nifti(mask_path)
    meshes = build_meshes(vol)
    mesh_s = time.perf_counter() - start
    plotter = pv.Plotter(off_screen=True, window_size=(16, 16))
    plotter.screenshot()  # the GL context exists only once something was rendered
    caps = plotter.ren_win.ReportCapabilities()
    plotter.close()
    renderer = next(
        (line.split(":", 1)[1].strip() for line in caps.splitlines() if "renderer string" in line), "?"
    )
    return {
        "shape": "x".join(map(str, vol.shape)),
        "faces": sum(m.n_cells for m in meshes.values()),
        "load_mesh_s": mesh_s,
        "frames_s": total_s - mesh_s,
        "total_s": total_s,
        "cpu_s": cpu_s,
        "ms_per_frame": 1000 * (total_s - mesh_s) / frames,
        "peak_rss_mb": peak_mb,
        "mp4_kb": out.stat().st_size / 1024,
        "gl_renderer": renderer,
    }


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _machine() -> dict:
    cpu = "?"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
    return {"uname": uname, "nproc": nproc, "cpu": cpu, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=72)
    parser.add_argument("--size", type=int, default=720, help="square frame side in pixels (even)")
    parser.add_argument(
        "--cases", default="real,synthetic,thick", help="comma-separated: real, synthetic, thick"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # internal: one step in a fresh process
        step, path = args.child[0], Path(args.child[1])
        if step == "make-real":
            make_real(path)
            print(json.dumps({}))
        elif step == "make-synthetic":
            make_synthetic(path)
            print(json.dumps({}))
        elif step == "make-thick":
            make_thick(path)
            print(json.dumps({}))
        else:
            print(json.dumps(run_case(path, args.frames, args.size, path.parent)))
        return

    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        for case in args.cases.split(","):
            needed = {"real": REAL_SEG, "thick": ANATOMY}.get(case)
            if needed is not None and not needed.exists():
                print(f"skipping {case}: {needed} not found", file=sys.stderr)
                continue
            mask = Path(tmp) / f"{case}_mask.nii.gz"
            _child([f"make-{case}", str(mask)])
            result = _child(["render", str(mask), "--frames", str(args.frames), "--size", str(args.size)])
            rows.append({"case": case, **result})

    header = (
        "| case | mask | faces | load+mesh s | frames s | ms/frame | total s | CPU s | peak RSS MB | mp4 KB |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['shape']} | {r['faces']} | {r['load_mesh_s']:.2f} | {r['frames_s']:.2f} | "
            f"{r['ms_per_frame']:.0f} | {r['total_s']:.2f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['mp4_kb']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.no_record or not rows:
        return
    machine = _machine()
    command = "python benchmarks/bench_render.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    section = "\n".join(
        [
            f"\n## render: {args.size}x{args.size}, {args.frames} frames ({dt.date.today().isoformat()})",
            "",
            f"Command: `{command.strip()}` (from the repository root; each case in a fresh process).",
            f"Machine: `{machine['uname']}`; nproc {machine['nproc']}; CPU {machine['cpu']}; "
            f"Python {machine['python']}; OpenGL {rows[0]['gl_renderer']} (off-screen EGL); 1-min load average "
            f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (wall times grow when it exceeds nproc).",
            "Time: `render()` wall clock (read, validate, meshes, frames, H.264 encode, atomic rename); "
            "load+mesh is the same mask read and meshed again on its own. CPU s: user+sys of the process and "
            "its ffmpeg encoder up to the end of `render()` (imports included), which other load on the "
            "machine does not inflate. Peak RSS: `ru_maxrss` of the Python process "
            "(the ffmpeg encoder is a separate process, not included).",
            "",
            table,
            "",
        ]
    )
    bench = REPO / "BENCHMARKS.md"
    if not bench.exists():
        bench.write_text("# Benchmarks\n\nEach section: date, exact command, machine, results.\n")
    with bench.open("a") as fh:
        fh.write(section)
    print(f"appended to {bench}")


if __name__ == "__main__":
    main()
