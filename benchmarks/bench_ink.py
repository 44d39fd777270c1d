"""Ink benchmarks: (1) inference on a large synthetic fragment, time and peak RSS; (2) the demo's F0.5.

(1) ``infer``: synthesizes one ``ROWSxCOLUMNS x 65`` fragment (default 8192 x 6144, raw 16-bit
TIFFs, about 6.5 GB on disk; reused if already there; by default a 4 x 4 mosaic of one 2048 x 1536
synthetic fragment, see ``mosaic_fragment``), saves a randomly initialised model with the
``ink`` config (speed and memory do not depend on the weights), then runs ``organseg ink infer`` in
a child process and reports its wall time and peak RSS (``ru_maxrss`` of the child). The point is
the memory bound: the volume window alone would be 3.2 GB as uint16 and 6.4 GB as float32.

(2) ``demo``: runs ``organseg ink demo`` for the ``easy`` and ``realistic`` levels and reports the
held-out F0.5 next to the fixed-slice baseline and chance (from each demo's report.json).

Usage (from the repository root):
    python benchmarks/bench_ink.py infer --work /tmp/ink-bench [--size 8192x6144] [--tta none]
    python benchmarks/bench_ink.py demo --work /tmp/ink-demo-bench [--epochs N]
Prints a markdown table to paste into BENCHMARKS.md with the date, command and machine.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


LOAD_AT_START = os.getloadavg()[0]


def machine() -> str:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    return f"{cpu}, {os.cpu_count()} cores, load {LOAD_AT_START:.1f} at start, {os.getloadavg()[0]:.1f} at the end"


def run_child(args: list[str]) -> tuple[float, float, str]:
    """Run ``python -m organseg.cli ...``; return (seconds, peak RSS in MB of the child, stdout)."""
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "organseg.cli", *args], capture_output=True, text=True)
    seconds = time.time() - t0
    if done.returncode:
        sys.exit(f"failed: organseg {' '.join(args)}\n{done.stderr}")
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, done.stdout


def mosaic_fragment(base_dir: Path, out: Path, h: int, w: int, n: int) -> None:
    """A ``h x w`` fragment made of ``n x n`` copies of one synthetic ``h/n x w/n`` fragment.

    The generator's full-size smooth fields take long on 2 shared cores; inference time and memory
    depend on the size, the TIFF layout and the mask share, which a mosaic keeps.
    """
    import numpy as np
    import tifffile
    from PIL import Image

    from organseg.ink.synth import synth_fragment

    base = synth_fragment(
        base_dir, seed=0, height=h // n, width=w // n, difficulty="realistic", overwrite=True
    )
    tmp = out.parent / f".{out.name}.tmp"
    (tmp / "surface_volume").mkdir(parents=True, exist_ok=True)
    for z in range(65):
        sl = tifffile.imread(base / "surface_volume" / f"{z:02d}.tif")
        tifffile.imwrite(tmp / "surface_volume" / f"{z:02d}.tif", np.tile(sl, (n, n))[:h, :w])
    for name in ("mask.png", "ir.png"):
        img = np.asarray(Image.open(base / name))
        Image.fromarray(np.tile(img, (n, n))[:h, :w]).save(tmp / name)
    tmp.rename(out)


def bench_infer(args: argparse.Namespace) -> None:
    import torch

    from organseg.checkpoint import save_checkpoint
    from organseg.ink.config import ink_config_to_dict, load_ink_config
    from organseg.ink.model import build_ink_model
    from organseg.ink.synth import synth_fragment

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    h, w = (int(v) for v in args.size.split("x"))
    frag = work / f"frag_{h}x{w}"
    t_synth = None
    if not (frag / "mask.png").is_file():
        t0 = time.time()
        if args.mosaic > 1:
            mosaic_fragment(work / "base", frag, h, w, args.mosaic)
        else:
            synth_fragment(
                frag, seed=0, height=h, width=w, difficulty="realistic", labels=False, overwrite=True
            )
        t_synth = time.time() - t0
    cfg = load_ink_config(args.config)
    torch.manual_seed(0)
    model = build_ink_model(cfg)
    ckpt = work / "random_model.pt"
    save_checkpoint(
        ckpt,
        {
            "task": "ink",
            "model": model.state_dict(),
            "config": ink_config_to_dict(cfg),
            "threshold": 0.5,
            "epoch": 0,
        },
    )
    out = work / "pred"
    cmd = [
        "ink",
        "infer",
        "--input",
        str(frag),
        "--model",
        str(ckpt),
        "--out",
        str(out),
        "--submission",
        str(work / "submission.csv"),
        "--tta",
        args.tta,
        "--stride",
        str(args.stride),
        "--overwrite",
        "--device",
        "cpu",
    ]
    seconds, rss_mb, _ = run_child(cmd)
    px = h * w
    print("\n| fragment | slices read | tile / stride | TTA | infer time | peak RSS | synth time |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {h} x {w} x 65 (raw TIFF{f', {args.mosaic}x{args.mosaic} mosaic' if args.mosaic > 1 else ''}) | {cfg.data.z_start}-{cfg.data.z_stop - 1} | {cfg.train.tile} / {args.stride} | {args.tta} | "
        f"{seconds:.0f} s ({px / seconds / 1e6:.2f} Mpx/s) | {rss_mb / 1024:.2f} GB | "
        f"{f'{t_synth:.0f} s' if t_synth else 'reused'} |"
    )
    print(
        f"\ncommand: python benchmarks/bench_ink.py infer --work {args.work} --size {args.size} --tta {args.tta} --stride {args.stride} --mosaic {args.mosaic} --config {args.config}"
    )
    print(f"date: {datetime.date.today()}; machine: {machine()}")


def bench_demo(args: argparse.Namespace) -> None:
    rows = []
    for level in ("easy", "realistic"):
        out = Path(args.work) / level
        cmd = ["ink", "demo", "--out", str(out), "--difficulty", level, "--overwrite", "--device", "cpu"]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        seconds, _, _ = run_child(cmd)
        rep = json.loads((out / "report.json").read_text())
        rows.append((level, rep, seconds))
    print(
        "\n| level | held-out F0.5 | precision | recall | fixed-slice baseline F0.5 (slice) | chance F0.5 | demo time |"
    )
    print("|---|---|---|---|---|---|---|")
    for level, rep, seconds in rows:
        m, b = rep["model"], rep["baseline"]
        print(
            f"| {level} | {m['fbeta']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {b['fbeta']:.3f} ({b['slice']:02d}) | {b['chance_fbeta']:.3f} | {seconds:.0f} s |"
        )
    print(
        f"\ncommand: python benchmarks/bench_ink.py demo --work {args.work}"
        + (f" --epochs {args.epochs}" if args.epochs else "")
    )
    print(f"date: {datetime.date.today()}; machine: {machine()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("infer", help="time and peak RSS of inference on a large fragment")
    p.add_argument("--work", default="/tmp/ink-bench")
    p.add_argument("--size", default="8192x6144", help="ROWSxCOLUMNS")
    p.add_argument("--tta", default="none", choices=["none", "flip", "rot90"])
    p.add_argument("--config", default="ink")
    p.add_argument(
        "--mosaic", type=int, default=4, help="tile N x N copies of a smaller fragment (1: full size)"
    )
    p.add_argument("--stride", type=int, default=96, help="tile stride, pixels (tile 128: 25 %% overlap)")
    d = sub.add_parser("demo", help="held-out F0.5 of the demo, easy and realistic")
    d.add_argument("--work", default="/tmp/ink-demo-bench")
    d.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    bench_infer(args) if args.what == "infer" else bench_demo(args)


if __name__ == "__main__":
    main()
