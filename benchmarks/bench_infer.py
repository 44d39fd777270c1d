"""Benchmark ``organseg.segment`` against a plain MONAI inference path with the same weights.

Cases (each pipeline runs in a fresh process, so peak RSS is its own):

(a) the real CT ``../shared/data/totalseg-example/ct.nii.gz`` (122x101x30 at 3 mm);
(b) a synthetic 512x512x300 CT at 0.8x0.8x1.5 mm (air, body, liver/spleen/kidneys/spine, noise).

Both run with the ``demo`` config (3 mm, 64^3 windows) by default. ``--config abdomen`` runs (b) at
1.5 mm with 128^3 windows as the design card specifies; on the shared 2-core test machine one 128^3
window of the VNet takes about 10 s on one thread, so that run takes well over 10 minutes.

Paths:
- ``organseg``: ``organseg.segment`` (overlap 0.25, no postprocessing, so masks are comparable);
- ``organseg-nocrop``: the same with the checkpoint's ``preprocess.crop_foreground`` off, i.e. the
  plain reference's field of view (isolates what the body crop changes);
- ``reference``: ``LoadImage -> Orientation(RAS) -> Spacing -> ScaleIntensityRange (HU window) ->
  sliding_window_inference(roi, overlap 0.25, gaussian) -> ResampleToMatch(original) -> argmax``;
- ``pipeline`` (case a): organseg's MONAI transforms (``infer_transforms``, with the body crop) +
  sliding window + ``Invertd``: what organseg's fast path replays.

Weights are randomly initialised (``build_model(load_config(...))``, seed 0) and shared through one
checkpoint. Also measured: the CPU's conv3d throughput (one large Conv3d, best of 3), the fraction of it
the VNet achieves inside ``segment``, and eager vs channels-last-3D vs ``torch.compile`` for one window.

Usage (from the repository root):
    python benchmarks/bench_infer.py                # prints a table, appends to BENCHMARKS.md
    python benchmarks/bench_infer.py --threads 1    # on a machine shared with other jobs
    python benchmarks/bench_infer.py --config abdomen --no-compile --no-append
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
REAL_CT = REPO.parent / "shared" / "data" / "totalseg-example" / "ct.nii.gz"
OVERLAP = 0.25


# --------------------------------------------------------------------------------------- children


def _peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_organseg(case: Path, model: Path, out: Path, threads: int) -> dict:
    from organseg.infer import segment

    t, c = time.perf_counter(), _cpu_s()
    result = segment(
        case,
        out,
        model=model,
        overlap=OVERLAP,
        postprocess=False,
        progress=False,
        device="cpu",
        overwrite=True,
        threads=threads,
    )
    wall, cpu = time.perf_counter() - t, _cpu_s() - c
    manifest = json.loads(out.with_name(out.name.replace(".nii.gz", ".run.json")).read_text())
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": _peak_rss_mb(),
        "stages": result.cases[0].timings_s,
        "network_grid": manifest["network_grid"]["shape"],
    }


def _reference_predictor(model: Path):
    import torch

    from organseg.checkpoint import load_checkpoint, model_from_checkpoint

    net, cfg = model_from_checkpoint(load_checkpoint(model))
    return (lambda x: torch.softmax(net(x), 1)), cfg


def child_reference(case: Path, model: Path, out: Path, threads: int) -> dict:
    """LoadImage -> Orientation -> Spacing -> HU window -> sliding window -> ResampleToMatch -> argmax."""
    import nibabel as nib
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import LoadImage, Orientation, ResampleToMatch, ScaleIntensityRange, Spacing

    torch.set_num_threads(threads)
    t, c = time.perf_counter(), _cpu_s()
    stages = {}
    predict, cfg = _reference_predictor(model)
    p = cfg.preprocess
    original = LoadImage(image_only=True, ensure_channel_first=True)(str(case))
    image = Spacing(pixdim=p.spacing_mm, mode="bilinear")(Orientation(axcodes=p.orientation)(original))
    image = ScaleIntensityRange(p.hu_window[0], p.hu_window[1], 0.0, 1.0, clip=True)(image)
    stages["preprocess"] = time.perf_counter() - t
    s = time.perf_counter()
    with torch.inference_mode():
        probs = sliding_window_inference(
            image[None], cfg.infer_patch_size, 1, predict, overlap=OVERLAP, mode="gaussian"
        )
        stages["network"] = time.perf_counter() - s
        s = time.perf_counter()
        back = ResampleToMatch(mode="bilinear")(probs[0], img_dst=original)
        mask = torch.argmax(back, 0).numpy().astype(np.uint8)
    stages["invert"] = time.perf_counter() - s
    nib.save(nib.Nifti1Image(mask, np.asarray(original.affine, dtype=np.float64)), str(out))
    return {
        "wall_s": time.perf_counter() - t,
        "cpu_s": _cpu_s() - c,
        "peak_rss_mb": _peak_rss_mb(),
        "stages": stages,
    }


def child_pipeline(case: Path, model: Path, out: Path, threads: int) -> dict:
    """organseg's own MONAI pipeline: infer_transforms (with body crop) + sliding window + Invertd."""
    import nibabel as nib
    import torch
    from monai.inferers import sliding_window_inference

    from organseg.transforms import infer_transforms, invert_to_input

    torch.set_num_threads(threads)
    t, c = time.perf_counter(), _cpu_s()
    predict, cfg = _reference_predictor(model)
    pipeline = infer_transforms(cfg)
    sample = pipeline({"image": str(case)})
    with torch.inference_mode():
        probs = sliding_window_inference(
            sample["image"][None], cfg.infer_patch_size, 1, predict, overlap=OVERLAP, mode="gaussian"
        )
        sample["pred"] = probs[0]
        back = torch.as_tensor(invert_to_input(pipeline, sample)["pred"])
        back[0] += 1.0 - back.sum(0)  # as organseg: mass outside the crop is background
        mask = torch.argmax(back, 0).numpy().astype(np.uint8)
    affine = np.asarray(nib.load(str(case)).affine)
    nib.save(nib.Nifti1Image(mask, affine), str(out))
    return {
        "wall_s": time.perf_counter() - t,
        "cpu_s": _cpu_s() - c,
        "peak_rss_mb": _peak_rss_mb(),
        "stages": {},
    }


CHILDREN = {"organseg": child_organseg, "reference": child_reference, "pipeline": child_pipeline}


def run_child(kind: str, case: Path, model: Path, out: Path, threads: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--threads",
        str(threads),
        "--child",
        kind,
        str(case),
        str(model),
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------- measurements


def synthetic_ct(path: Path, shape=(512, 512, 300), spacing=(0.8, 0.8, 1.5), seed: int = 0) -> Path:
    """An abdomen-like CT: air, an elliptical body, liver/spleen/kidneys/spine, noise; uncompressed NIfTI."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    x = (np.arange(shape[0]) - shape[0] / 2) * spacing[0]
    y = (np.arange(shape[1]) - shape[1] / 2) * spacing[1]
    z = (np.arange(shape[2]) - shape[2] / 2) * spacing[2]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    body2d = (xx / 165) ** 2 + (yy / 120) ** 2 < 1
    ct = np.full(shape, -1000, np.int16)
    ct[body2d] = -90  # fat
    ct[((xx / 150) ** 2 + (yy / 105) ** 2 < 1)] = 30  # muscle / soft tissue
    organs = [  # (centre x, y, z mm, radii mm, HU): RAS, +x is the patient's right
        (
            (-70, 10, 40),
            (75, 65, 90),
            60,
        ),  # liver on the right (RAS +x = right... mirrored is fine for timing)
        ((80, 30, 60), (35, 45, 60), 50),  # spleen
        ((-55, 55, -30), (28, 25, 50), 35),  # kidney
        ((55, 55, -30), (28, 25, 50), 35),  # kidney
        ((0, 70, 0), (18, 18, 300), 400),  # spine
    ]
    zz = z[None, None, :]
    for (cx, cy, cz), (rx, ry, rz), hu in organs:
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        for k in np.flatnonzero(np.abs(zz[0, 0] - cz) < rz):
            r2 = 1 - ((z[k] - cz) / rz) ** 2
            ct[:, :, k][inside < r2] = hu
    ct += rng.integers(-15, 16, size=shape, dtype=np.int16)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [x[0], y[0], z[0]]
    nib.save(nib.Nifti1Image(ct, affine), str(path))
    return path


def conv3d_peak_gflops(channels: int = 64, size: int = 48, reps: int = 3) -> float:
    import torch

    conv = torch.nn.Conv3d(channels, channels, 3, padding=1, bias=False).eval()
    x = torch.randn(1, channels, size, size, size)
    flops = 2 * channels * channels * 27 * size**3
    with torch.inference_mode():
        conv(x)
        best = min(_timed(lambda: conv(x)) for _ in range(reps))
    return flops / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def window_variants(config: str, compile_too: bool, reps: int = 3) -> dict[str, dict]:
    """Seconds per window for eager, channels-last-3D and torch.compile (first call = compile time)."""
    import torch

    from organseg.checkpoint import build_model
    from organseg.config import load_config

    cfg = load_config(config)
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    x = torch.randn(1, 1, *cfg.infer_patch_size)
    out: dict[str, dict] = {}
    with torch.inference_mode():
        ref = net(x)
        out["eager"] = {"s": min(_timed(lambda: net(x)) for _ in range(reps)), "max_abs_diff": 0.0}
        cl_net = build_model(cfg).eval()
        cl_net.load_state_dict(net.state_dict())
        cl_net = cl_net.to(memory_format=torch.channels_last_3d)
        xc = x.contiguous(memory_format=torch.channels_last_3d)
        diff = float((cl_net(xc) - ref).abs().max())
        out["channels_last_3d"] = {
            "s": min(_timed(lambda: cl_net(xc)) for _ in range(reps)),
            "max_abs_diff": diff,
        }
        if compile_too:
            try:
                compiled = torch.compile(net)
                first = _timed(lambda: compiled(x))
                diff = float((compiled(x) - ref).abs().max())
                out["torch.compile"] = {
                    "s": min(_timed(lambda: compiled(x)) for _ in range(reps)),
                    "first_call_s": first,
                    "max_abs_diff": diff,
                }
            except Exception as err:  # report, do not fail the benchmark
                out["torch.compile"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}
    for name in ("onnxruntime", "openvino"):
        try:
            __import__(name)
            out[name] = {"error": "installed but not benchmarked"}
        except ImportError:
            out[name] = {"error": "not installed"}
    return out


def dice_between(a_path: Path, b_path: Path, n_labels: int = 5) -> dict:
    import nibabel as nib

    a = np.asarray(nib.load(str(a_path)).dataobj)
    b = np.asarray(nib.load(str(b_path)).dataobj)
    out = {"voxel_agreement": float((a == b).mean())}
    for label in range(1, n_labels):
        x, y = a == label, b == label
        total = int(x.sum() + y.sum())
        out[label] = 1.0 if total == 0 else 2 * int((x & y).sum()) / total
    return out


def count_windows(grid_shape, patch) -> int:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    size = tuple(max(g, p) for g, p in zip(grid_shape, patch))
    interval = _get_scan_interval(size, patch, 3, (OVERLAP,) * 3)
    return len(dense_patch_slices(size, patch, interval))


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import monai
    import torch

    return {
        "uname": subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
        or " ".join(platform.uname()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "load": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default="demo", help="config for case (b): demo (64^3) or abdomen (128^3)"
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="skip torch.compile (it compiles for ~1 min)"
    )
    parser.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for every path (default: all cores)",
    )
    parser.add_argument("--child", nargs=4, metavar=("KIND", "CASE", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, case, model, out = args.child
        print(json.dumps(CHILDREN[kind](Path(case), Path(model), Path(out), args.threads)))
        return

    import torch

    from organseg.checkpoint import build_model, save_checkpoint
    from organseg.config import config_to_dict, load_config, replace_path
    from organseg.vnet import count_flops

    t_total = time.perf_counter()
    torch.set_num_threads(args.threads)
    info = machine()
    info["threads"] = args.threads
    print(
        f"machine: {info['cpu']}, nproc {info['nproc']}, torch {info['torch']}, load {info['load']:.1f}",
        flush=True,
    )
    peak = conv3d_peak_gflops()
    print(f"conv3d peak: {peak:.1f} GFLOP/s", flush=True)
    variants = window_variants("demo", compile_too=not args.no_compile)
    print(f"variants: {variants}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    rows = []
    paths = ("organseg", "organseg-nocrop", "reference")
    cases = [("a", "real CT 122x101x30 @3 mm", REAL_CT, "demo", (*paths, "pipeline"))]
    synth = synthetic_ct(tmp / "synthetic.nii")
    cases.append(("b", "synthetic 512x512x300 @0.8x0.8x1.5 mm", synth, args.config, paths))
    for key, label, case, config, kinds in cases:
        cfg = load_config(config)
        torch.manual_seed(0)
        net = build_model(cfg)
        ckpt = tmp / f"{key}_{config}.pt"
        save_checkpoint(ckpt, {"model": net.state_dict(), "config": config_to_dict(cfg)})
        nocrop = tmp / f"{key}_{config}_nocrop.pt"
        no_crop_cfg = replace_path(cfg, "preprocess.crop_foreground", False)
        save_checkpoint(nocrop, {"model": net.state_dict(), "config": config_to_dict(no_crop_cfg)})
        results = {}
        for kind in kinds:
            child, model = ("organseg", nocrop) if kind == "organseg-nocrop" else (kind, ckpt)
            results[kind] = run_child(child, case, model, tmp / f"{key}_{kind}.nii.gz", args.threads)
            print(f"({key}) {kind}: {results[kind]['wall_s']:.1f} s", flush=True)
        for kind in kinds:
            r = results[kind]
            gflops = windows = None
            if kind.startswith("organseg"):
                windows = count_windows(r["network_grid"], cfg.infer_patch_size)
                gflops = count_flops(net, cfg.infer_patch_size) * windows / r["stages"]["network"] / 1e9
            out = tmp / f"{key}_{kind}.nii.gz"
            rows.append(
                {
                    "case": f"({key}) {label}",
                    "config": f"{config} ({cfg.preprocess.spacing_mm[0]:g} mm, roi {cfg.infer_patch_size[0]})",
                    "path": kind,
                    "wall_s": r["wall_s"],
                    "cpu_s": r["cpu_s"],
                    "network_s": r["stages"].get("network"),
                    "vs_reference": r["wall_s"] / results["reference"]["wall_s"],
                    "peak_rss_mb": r["peak_rss_mb"],
                    "dice_ref": None
                    if kind == "reference"
                    else dice_between(tmp / f"{key}_reference.nii.gz", out),
                    "dice_org": None
                    if kind == "organseg"
                    else dice_between(tmp / f"{key}_organseg.nii.gz", out),
                    "windows": windows,
                    "net_gflops": gflops,
                    "of_peak": None if gflops is None else gflops / peak,
                }
            )
    load_after = os.getloadavg()[0]
    table = format_report(rows, peak, variants)
    print(table)
    total = time.perf_counter() - t_total
    print(f"total {total:.0f} s")
    if not args.no_append:
        append(table, info, load_after, args, total)


def _f(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _dice_text(d: dict | None) -> str:
    if d is None:
        return "-"
    return ", ".join(f"{d[i]:.4f}" for i in range(1, 5)) + f"; {d['voxel_agreement']:.5f}"


def format_report(rows: list[dict], peak: float, variants: dict) -> str:
    lines = [
        "| case | config | path | wall s | CPU s | network s | × reference wall | peak RSS MB | "
        "Dice vs reference (liver, kR, kL, spleen; voxel agreement) | Dice vs organseg (same) | windows | "
        "VNet GFLOP/s (of conv3d peak) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        perf = "-" if r["net_gflops"] is None else f"{r['net_gflops']:.1f} ({100 * r['of_peak']:.0f}%)"
        lines.append(
            f"| {r['case']} | {r['config']} | {r['path']} | {_f(r['wall_s'])} | {_f(r['cpu_s'])} | "
            f"{_f(r['network_s'])} | {_f(r['vs_reference'], 2)} | {_f(r['peak_rss_mb'], 0)} | "
            f"{_dice_text(r['dice_ref'])} | {_dice_text(r['dice_org'])} | {r['windows'] or '-'} | {perf} |"
        )
    lines += ["", f"conv3d peak (Conv3d 64->64, 3^3, 48^3 voxels, best of 3): {peak:.1f} GFLOP/s", ""]
    lines += [
        "| one 64^3 window, demo VNet | s/window | first call s | max abs diff vs eager |",
        "|---|---|---|---|",
    ]
    for name, v in variants.items():
        if "error" in v:
            lines.append(f"| {name} | {v['error']} | - | - |")
        else:
            lines.append(f"| {name} | {v['s']:.3f} | {_f(v.get('first_call_s'))} | {v['max_abs_diff']:.2g} |")
    return "\n".join(lines)


def append(table: str, info: dict, load_after: float, args: argparse.Namespace, total: float) -> None:
    cmd = "python benchmarks/bench_infer.py" + (f" --config {args.config}" if args.config != "demo" else "")
    cmd += " --no-compile" if args.no_compile else ""
    cmd += f" --threads {args.threads}" if args.threads != (os.cpu_count() or 1) else ""
    section = [
        "",
        f"## infer: organseg.segment vs plain MONAI ({datetime.date.today().isoformat()})",
        "",
        f"Command: `{cmd}` (from the repository root; each pipeline in a fresh process; {total:.0f} s in all).",
        f"Machine: `{info['uname']}`; nproc {info['nproc']}; CPU {info['cpu']}; Python {info['python']}; "
        f"torch {info['torch']}; MONAI {info['monai']}; torch threads {info['threads']}; 1-min load average {info['load']:.1f} before, "
        f"{load_after:.1f} after (the cores are shared with other jobs: wall times vary; CPU s is steadier).",
        "Weights: random init (`build_model(load_config(config))`, seed 0), one checkpoint shared by all paths; "
        f"overlap {OVERLAP} everywhere; organseg without postprocessing. `reference` = LoadImage -> Orientation "
        "-> Spacing -> HU window -> sliding_window_inference -> ResampleToMatch -> argmax (no body crop); "
        "`pipeline` = organseg's MONAI transforms (`infer_transforms`: with the body crop) + sliding window + "
        "Invertd; `organseg-nocrop` = organseg with the checkpoint's `preprocess.crop_foreground` off (the "
        "plain reference's field of view). Dice: per organ between the two paths' masks (random weights: "
        "labels are arbitrary but deterministic).",
        "",
        table,
        "",
    ]
    with open(REPO / "BENCHMARKS.md", "a") as fh:
        fh.write("\n".join(section))


if __name__ == "__main__":
    main()
