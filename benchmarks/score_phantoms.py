"""Score models on a training config's fixed validation phantoms: the yardstick for choosing checkpoints.

The built-in model's checkpoints are chosen on phantoms, never on the real CTs (issue 13). This builds
the validation phantoms exactly as ``organseg train --config CONFIG`` does (seeds
``train.synthetic.seed + 1_000_000 + i``, the same generator, variants and label-map share) and runs
the training loop's own ``validate`` (sliding window at the config's settings, Dice per organ on the
3 mm grid) for each model given.

Usage:
    python benchmarks/score_phantoms.py --config configs/abdomen-synth-v2.yaml \
        --model builtin --model runs/builtin-v2/fold_0/checkpoint_best.pt [--val-cases 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch


def load(model: str) -> torch.nn.Module:
    from organseg.modelstore import default_model, load_model_file

    return load_model_file(default_model() if model == "builtin" else model)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--model", action="append", required=True, help="builtin, .safetensors or .pt")
    parser.add_argument("--val-cases", type=int, default=None)
    args = parser.parse_args()

    from organseg.config import load_config
    from organseg.training.data import synthetic_fold_data
    from organseg.training.loop import validate

    cfg = load_config(args.config)
    if args.val_cases is not None:
        syn = dataclasses.replace(cfg.train.synthetic, val_cases=args.val_cases)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, synthetic=syn))
    t = time.perf_counter()
    data = synthetic_fold_data(cfg)
    samples = list(data.val_samples())
    data.close()
    print(f"{len(samples)} validation phantoms built in {time.perf_counter() - t:.0f} s")
    organs = cfg.labels.organs
    print("| model | " + " | ".join(organs) + " | mean |")
    print("|---|" + "---|" * (len(organs) + 1))
    for name in args.model:
        net = load(name).eval()
        with torch.inference_mode():
            dice = validate(net, iter(samples), cfg, torch.device("cpu"))
        values = [dice[o] for o in organs]
        cells = " | ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {cells} | {np.nanmean(values):.3f} |", flush=True)


if __name__ == "__main__":
    main()
