"""organseg in a child process with a fixed thread count: ``organseg demo``'s training, ``organseg infer``.

The same calls the commands make (``organseg train --config demo --fold 0`` as ``organseg demo`` runs it;
``organseg infer`` with its default ``auto`` backend, and the process settings of the ``organseg``
command: ``cli.keep_freed_memory``, MONAI's lean import), except that the torch thread count is fixed
(``--threads``) instead of adapting to the other load on the machine, so every peer gets the same budget.

Usage::

    python benchmarks/peers/organseg_side.py train --data DIR --run DIR [--threads 2]
    python benchmarks/peers/organseg_side.py infer --input CT --output MASK [--model RUN] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def train_demo(data: Path, run: Path, threads: int, epochs: int | None) -> None:
    """One fold of ``configs/demo.yaml`` on ``data``, exactly as ``organseg.pipeline.demo`` trains it."""
    from organseg.config import load_config, replace_path
    from organseg.training import train

    cfg = load_config("demo")
    if epochs is not None:
        cfg = replace_path(cfg, "train.epochs", epochs)
    n_train = len(list((data / "imagesTr").glob("*.nii.gz")))
    if cfg.train.folds > n_train:
        cfg = replace_path(cfg, "train.folds", n_train)
    train(cfg, data, run, folds=[0], resume=False, device="cpu", progress=False, num_threads=threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--run", type=Path, required=True)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--epochs", type=int, default=None, help="override the demo's 45 (quick checks only)")
    i = sub.add_parser("infer")
    i.add_argument("--input", type=Path, required=True)
    i.add_argument("--output", type=Path, required=True)
    i.add_argument("--model", default=None, help="run folder (default: the built-in model)")
    i.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from organseg.cli import keep_freed_memory

    keep_freed_memory()  # as every ``organseg`` command does for its process
    if a.cmd == "train":
        train_demo(a.data, a.run, a.threads, a.epochs)
    else:
        from organseg.infer import segment

        segment(
            a.input, a.output, model=a.model, device="cpu", overwrite=True, progress=False,
            threads=a.threads, backend="auto", lean_imports=True,
        )  # fmt: skip


if __name__ == "__main__":
    main()
