"""Batch inference split over processes or machines: shares, resumable runs, one combined manifest.

A folder of CTs is cut into N disjoint shares of about equal work, and share K is segmented by
process K. Two ways to run it, same shares either way:

- under ``torchrun`` (``torchrun --nproc-per-node N -m organseg infer --input scans/ --output masks/``):
  rank K takes share K on its own device (``cuda:LOCAL_RANK``), waits for the others at a
  ``torch.distributed`` barrier, and rank 0 writes ``<output>/batch_manifest.json``;
- with ``--shard K/N`` (a scheduler such as a SLURM array starts N independent jobs, K = 0..N-1): no
  process group; whichever share finishes last, seeing every case done, writes the combined manifest.

**Shares** (``assign_shards``): cases sorted by size (voxels from the header, bytes where there is no
cheap header), then each given to the share with the least work so far (longest-processing-time-first
greedy, ties to the lower share, sizes then names), so every process computes the same split without
talking to the others and the shares differ by at most about one case's work.

**Resume**: a case is done when its run manifest ``<case>.run.json`` exists and reads as JSON; it is
written last and atomically (``infer/__init__``), so a case cut off by a crash has none, and a
rerun of the same command redoes exactly the missing cases (replacing their partial files) and skips
the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from organseg import io
from organseg.errors import ConfigError, InputError

COMBINED = "batch_manifest.json"

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N`` (0-based, as SLURM's ``$SLURM_ARRAY_TASK_ID`` with
    ``--array=0-<N-1>``); ``ConfigError`` for anything else."""
    m = _SHARD.match(str(text))
    if not m:
        raise ConfigError(f"--shard: expected K/N such as 0/4 (share K of N, K from 0), got {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"--shard: share {k} of {n} is out of range; K must be 0..N-1 and N >= 1")
    return k, n


def case_size(path: Path) -> int:
    """Work estimate for one case: voxels from the image header, or bytes on disk without one (zip,
    an unreadable header: that case's own error is reported when it is segmented)."""
    if path.is_file() and not path.name.lower().endswith(".zip"):
        try:
            info = io.read_image_info(path)
            n = 1
            for s in info.shape:
                n *= int(s)
            return n
        except (InputError, OSError):
            pass
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def assign_shards(sizes: Sequence[int], n: int, names: Sequence[str] | None = None) -> list[int]:
    """The share (0..n-1) of each case: biggest first, each to the least loaded share.

    Deterministic from ``sizes`` and ``names`` alone (ties: bigger first, then name, then the lower
    share), so independent processes agree.
    """
    names = list(names) if names is not None else [f"{i:012d}" for i in range(len(sizes))]
    order = sorted(range(len(sizes)), key=lambda i: (-int(sizes[i]), names[i]))
    load = [0] * n
    share = [0] * len(sizes)
    for i in order:
        k = min(range(n), key=lambda j: (load[j], j))
        share[i] = k
        load[k] += max(1, int(sizes[i]))
    return share


def shard_of(inputs: Sequence[Path], k: int, n: int) -> list[Path]:
    """The inputs share ``k`` of ``n`` segments, in their original order."""
    shares = assign_shards([case_size(p) for p in inputs], n, [p.name for p in inputs])
    return [p for p, s in zip(inputs, shares, strict=True) if s == k]


def is_done(manifest: Path) -> bool:
    """True when a case's run manifest exists and is complete JSON (it is written last, atomically)."""
    try:
        return isinstance(json.loads(Path(manifest).read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def combined_manifest(cases: Sequence[tuple[str, Path, Path]], shards: int) -> dict:
    """One record for the whole batch from the per-case manifests: ``cases`` is (name, input, manifest).

    Cases without a complete manifest are listed under ``missing``.
    """
    done, missing = [], []
    for name, source, manifest in cases:
        if not is_done(manifest):
            missing.append(name)
            continue
        m = json.loads(manifest.read_text(encoding="utf-8"))
        done.append(
            {
                "case": name,
                "input": str(source),
                "manifest": str(manifest),
                "outputs": m.get("outputs", []),
                "volumes_ml": m.get("volumes_ml", {}),
                "warnings": m.get("warnings", []),
                "models": m.get("models", []),
            }
        )
    return {"organseg_batch": 1, "shards": shards, "cases": done, "missing": missing}


def write_combined(output: Path, cases: Sequence[tuple[str, Path, Path]], shards: int) -> Path:
    """Write ``<output>/batch_manifest.json`` atomically (replacing an older one from an earlier pass)."""
    path = Path(output) / COMBINED
    io.atomic_write_json(path, combined_manifest(cases, shards), overwrite=True)
    return path


def segment_share(
    input: str | Path,
    output: str | Path,
    *,
    shard: tuple[int, int] | None = None,
    ctx=None,
    **segment_kwargs,
):
    """``segment`` for this process's share of a folder of CTs, then the combined manifest.

    Args:
        input: a folder of CT files.
        output: the mask folder (``<output>/<case>.nii.gz`` + ``<case>.run.json``).
        shard: ``(K, N)`` for independent jobs (``--shard K/N``); ``None`` under ``torchrun``.
        ctx: the ``training.distributed.DistContext`` of a ``torchrun`` job (rank K of N); its ranks
            meet at a barrier once all are done and rank 0 writes ``batch_manifest.json``.
        segment_kwargs: passed to ``segment`` (``skip_existing`` is always on: reruns resume).

    Returns:
        ``segment``'s ``SegmentResult`` for this share.
    """
    from organseg.infer import list_cases, outputs, segment
    from organseg.io import case_name

    launched = ctx is not None and ctx.distributed
    if launched and shard is not None:
        raise ConfigError("--shard: not under torchrun, which already splits the cases over its processes")
    k, n = (ctx.rank, ctx.world_size) if launched else shard or (0, 1)
    inputs, batch = list_cases(Path(input))
    if not batch:
        if launched and ctx.rank != 0:
            raise SystemExit(ConfigError.exit_code)  # rank 0 says why, once
        raise ConfigError(
            f"{input}: only a folder of CT files can be split over processes; run one case as one process"
        )
    segment_kwargs["skip_existing"] = True
    if launched and segment_kwargs.get("threads") is None:  # the ranks on a node share its cores
        from organseg.training.distributed import cpu_threads_per_rank

        segment_kwargs["threads"] = cpu_threads_per_rank(ctx)
    result = segment(input, output, shard=(k, n), **segment_kwargs)
    output = Path(output)
    cases = []
    for path in inputs:
        stem = outputs.stem_of(output / f"{case_name(path)}.nii.gz")
        cases.append((case_name(path), path, stem.with_name(f"{stem.name}.run.json")))
    if launched:
        import torch.distributed as dist

        dist.barrier()
        if ctx.is_main:
            write_combined(output, cases, n)
    elif all(is_done(m) for _, _, m in cases):
        write_combined(output, cases, n)  # the last share to finish sees every case done
    return result
