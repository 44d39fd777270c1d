"""CPU speed of ``organseg infer`` on a 512 x 512 x 300 CT: old vs new paths in the same run (issue 19).

Cases (built once into ``--work``):
  phantom: a synthetic clinical CT, 512 x 512 x 300 at 0.8 x 0.8 x 1.0 mm (``phantom.generate_case``);
  real: the real example CT (../shared/data/totalseg-example, 3 mm) resampled to 0.8 x 0.8 x 0.3 mm on
        a 512 x 512 x 300 grid (air around it), so every voxel is real anatomy.

Parts (``--parts``, default all):
  e2e      fresh ``organseg infer`` processes, the built-in model, interleaved per repeat:
           ``baseline`` (the tree at ``--baseline``, a git revision, extracted with ``git archive``),
           ``torch`` and ``openvino`` (this tree, ``--backend``). Wall and CPU seconds (user + sys of the
           child) as medians, stage timings from the run manifests, Dice of every organ vs baseline.
  stages   in-process CPU seconds (``time.process_time``) of the reference and fast inversion and
           postprocessing on the same probabilities, interleaved, median of ``--repeats``.
  backends one batch of two 64^3 windows (the built-in model's sw_batch_size) on eager / ONNX Runtime /
           OpenVINO f32 / OpenVINO's default hint: seconds (median), max |logit - eager|, GFLOP/s and the
           fraction of the CPU's fp32 peak (see ``--ghz``), and whole-volume masks vs eager (Dice).
  imports  ``python -c "import organseg.infer"`` in fresh processes, baseline vs this tree.

The machine may be shared: the 1-minute load average is printed beside every timing, and CPU seconds
are the steadier figure. Usage (from the repository root):

    python benchmarks/bench_speed.py --repeats 5
    python benchmarks/bench_speed.py --parts backends --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
#: The card-width VNet (16-32-64-128): 258 GFLOP per 128^3 forward (issue 19), so 258/8 per 64^3 window.
GFLOP_PER_64 = 258.0 / 8


def load() -> float:
    return os.getloadavg()[0]


# --------------------------------------------------------------------------------------- cases


def build_cases(work: Path) -> dict[str, Path]:
    import nibabel as nib
    from scipy import ndimage

    from organseg.io import write_nifti
    from organseg.phantom import generate_case

    work.mkdir(parents=True, exist_ok=True)
    phantom, real = work / "phantom512.nii.gz", work / "real512.nii.gz"
    if not phantom.exists():
        image, _ = generate_case(
            7, spacing_mm=(0.8, 0.8, 1.0), shape=(512, 512, 300), max_voxels=90_000_000, phase="portal"
        )
        write_nifti(image.array.astype(np.int16), image, phantom)
    if not real.exists():
        src = nib.load(SHARED / "totalseg-example" / "ct.nii.gz")
        array, affine = np.asarray(src.dataobj, dtype=np.float32), src.affine
        shape, spacing = (512, 512, 300), np.array([0.8, 0.8, 0.3])
        scale = spacing / np.sqrt((affine[:3, :3] ** 2).sum(0))  # new index -> old index
        offset = (np.array(array.shape) - 1) / 2 - scale * (np.array(shape) - 1) / 2
        out = ndimage.affine_transform(array, scale, offset=offset, output_shape=shape, order=1, cval=-1024)
        new = affine.copy()
        new[:3, :3] = affine[:3, :3] * scale
        new[:3, 3] = affine[:3, :3] @ offset + affine[:3, 3]
        img = nib.Nifti1Image(np.round(out).astype(np.int16), new)
        img.set_qform(new, 1)
        img.set_sform(new, 1)
        nib.save(img, real)
    return {"phantom": phantom, "real": real}


def dice(a: np.ndarray, b: np.ndarray, organ: int) -> float:
    x, y = a == organ, b == organ
    total = int(x.sum()) + int(y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total


def read_mask(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)


# --------------------------------------------------------------------------------------- e2e


def baseline_tree(work: Path, rev: str) -> Path:
    src = work / f"baseline-{rev}"
    if not (src / "organseg").is_dir():
        src.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    return src


def run_infer(variant: str, case: Path, out: Path, baseline: Path) -> dict:
    """One fresh ``organseg infer`` process; cwd is ``out``'s folder so the baseline's tree wins."""
    args = ["-m", "organseg.cli", "infer", "--input", str(case), "--output", str(out), "--overwrite"]
    env = dict(os.environ)
    if variant == "baseline":
        env["PYTHONPATH"] = str(baseline)
    else:
        env["PYTHONPATH"] = str(REPO)
        args += ["--backend", variant]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    la = load()
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, cwd=out.parent, env=env, capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    manifest = json.loads(out.with_name(out.name.replace(".nii.gz", ".run.json")).read_text())
    return {
        "wall": wall,
        "cpu": cpu,
        "load": la,
        "stages": manifest["timings_s"],
        "threads": manifest["threads"],
    }


def part_e2e(cases: dict[str, Path], work: Path, rev: str, repeats: int, variants: list[str]) -> str:
    baseline = baseline_tree(work, rev)
    rows = [
        "| case | path | wall s (median) | CPU s (median) | load (1-min, range) | threads | stages s (median) | Dice vs baseline (liver, kR, kL, spleen) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, case in cases.items():
        runs = {v: [] for v in variants}
        for _ in range(repeats):
            for v in variants:
                runs[v].append(run_infer(v, case, work / f"{name}_{v}.nii.gz", baseline))
        ref = read_mask(work / f"{name}_baseline.nii.gz") if "baseline" in variants else None
        for v in variants:
            r = runs[v]
            stages = {k: statistics.median(x["stages"].get(k, 0.0) for x in r) for k in r[0]["stages"]}
            stage_text = ", ".join(f"{k} {s:.2f}" for k, s in stages.items())
            d = "-"
            if ref is not None and v != "baseline":
                mask = read_mask(work / f"{name}_{v}.nii.gz")
                d = ", ".join(f"{dice(mask, ref, o):.5f}" for o in range(1, 5))
                d += f" ({int((mask != ref).sum())} voxels differ)"
            loads = [x["load"] for x in r]
            rows.append(
                f"| {name} | {v} | {statistics.median(x['wall'] for x in r):.2f} | "
                f"{statistics.median(x['cpu'] for x in r):.2f} | {min(loads):.1f}-{max(loads):.1f} | "
                f"{r[0]['threads']} | {stage_text} | {d} |"
            )
            print(rows[-1], flush=True)
    return "\n".join(rows)


# --------------------------------------------------------------------------------------- stages


def part_stages(cases: dict[str, Path], repeats: int, threads: int) -> str:
    import torch

    from organseg import io
    from organseg.config import LabelMap
    from organseg.geometry import Grid
    from organseg.infer.invert import probabilities_to_input
    from organseg.infer.postprocess import postprocess_mask
    from organseg.infer.preprocess import prepare
    from organseg.infer.sliding import predict_probabilities
    from organseg.modelstore import default_model, load_model_file

    torch.set_num_threads(threads)
    net, cfg = load_model_file(default_model(), "cpu")
    rows = [
        "| case | stage | reference CPU s | fast CPU s | speed-up | identical | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, case in cases.items():
        vol = io.read_image(case, kind="ct")
        native = Grid(vol.shape, np.asarray(vol.affine, dtype=np.float64))
        prep = prepare(vol.array, vol.affine, cfg)
        with torch.inference_mode():
            probs = predict_probabilities(prep.image, [net], cfg, overlap=cfg.infer.overlap, sw_batch_size=2)
        times = {("invert", m): [] for m in ("reference", "fast")}
        times.update({("postprocess", m): [] for m in ("reference", "fast")})
        masks = {}
        for _ in range(repeats):
            for m in ("reference", "fast"):
                t = time.process_time()
                mask, _ = probabilities_to_input(probs, prep, native, method=m)
                times["invert", m].append(time.process_time() - t)
                t = time.process_time()
                postprocess_mask(mask, LabelMap(), cfg.infer.postprocess, method=m)
                times["postprocess", m].append(time.process_time() - t)
                masks[m] = mask
        same = np.array_equal(masks["reference"], masks["fast"])
        for stage in ("invert", "postprocess"):
            ref, fast = (statistics.median(times[stage, m]) for m in ("reference", "fast"))
            rows.append(
                f"| {name} | {stage} | {ref:.2f} | {fast:.2f} | {ref / fast:.1f}x | {same} | {load():.1f} |"
            )
            print(rows[-1], flush=True)
    return "\n".join(rows)


# --------------------------------------------------------------------------------------- backends


def part_backends(cases: dict[str, Path], repeats: int, threads: int, ghz: float) -> str:
    import torch

    from organseg import io
    from organseg.infer import backends
    from organseg.infer.preprocess import prepare
    from organseg.infer.sliding import predict_probabilities
    from organseg.modelstore import default_model, load_model_file

    torch.set_num_threads(threads)
    net, cfg = load_model_file(default_model(), "cpu")
    window = tuple(cfg.infer_patch_size)
    peak = threads * 32 * ghz  # GFLOP/s: 2 x 256-bit FMA pipes = 32 fp32 FLOP/cycle/core (Zen 4)
    runners = {"eager": net}
    for name, backend in (("onnxruntime", "onnx"), ("openvino f32", "openvino")):
        if backends.installed(backend):
            try:
                runners[name] = backends.wrap_networks([net], backend, window, threads)[0][0]
            except Exception as err:  # e.g. the onnx exporter package missing
                print(f"{name}: {err}")
    if backends.installed("openvino"):
        import openvino as ov

        core = ov.Core()
        key = backends._weights_key(net, window, ov.get_version())
        compiled = core.compile_model(
            core.read_model(backends.cache_dir() / "openvino" / f"{key}.xml"),
            "CPU",
            {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
        )
        request = compiled.create_infer_request()
        runners["openvino default hint"] = lambda x: torch.from_numpy(np.array(request.infer([x.numpy()])[0]))
    x = torch.rand(2, 1, *window, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = net(x)
    rows = [
        f"| backend | s / 2 windows (median of {repeats}) | GFLOP/s | of fp32 peak ({peak:.0f} GFLOP/s) | max abs logit diff | "
        + " | ".join(f"{c}: network s, Dice vs eager (liver, kR, kL, spleen)" for c in cases)
        + " | load |",
        "|---" * (6 + len(cases)) + "|",
    ]
    preps = {}
    for c, path in cases.items():
        vol = io.read_image(path, kind="ct")
        preps[c] = prepare(vol.array, vol.affine, cfg)
    eager_labels = {}
    for name, run in runners.items():
        times = []
        with torch.inference_mode():
            run(x)  # warm-up
            for _ in range(repeats):
                t = time.perf_counter()
                out = run(x)
                times.append(time.perf_counter() - t)
        s = statistics.median(times)
        gflops = 2 * GFLOP_PER_64 * (np.prod(window) / 64**3) / s
        cells = []
        for c, prep in preps.items():
            t = time.perf_counter()
            with torch.inference_mode():
                probs = predict_probabilities(
                    prep.image, [run], cfg, overlap=cfg.infer.overlap, sw_batch_size=2
                )
            net_s = time.perf_counter() - t
            labels = probs.as_subclass(torch.Tensor).argmax(0).numpy()
            if name == "eager":
                eager_labels[c] = labels
                cells.append(f"{net_s:.2f}, -")
            else:
                cells.append(
                    f"{net_s:.2f}, "
                    + ", ".join(f"{dice(labels, eager_labels[c], o):.4f}" for o in range(1, 5))
                )
        diff = float((out - reference).abs().max())
        rows.append(
            f"| {name} | {s:.3f} | {gflops:.0f} | {gflops / peak:.0%} | {diff:.2g} | "
            + " | ".join(cells)
            + f" | {load():.1f} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


# --------------------------------------------------------------------------------------- imports


def part_imports(work: Path, rev: str, repeats: int) -> str:
    baseline = baseline_tree(work, rev)
    rows = [
        "| tree | `import organseg.infer` wall s (median) | CPU s | MONAI imported |",
        "|---|---|---|---|",
    ]
    results = {"baseline": [], "this tree": []}
    code = "import sys, organseg.infer; print('monai' in sys.modules)"
    for _ in range(repeats):
        for tree, path in (("baseline", baseline), ("this tree", REPO)):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            p = subprocess.run(
                [sys.executable, "-c", code],
                cwd=work,
                env={**os.environ, "PYTHONPATH": str(path)},
                capture_output=True,
                text=True,
                check=True,
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            results[tree].append(
                (
                    time.perf_counter() - t,
                    after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
                    p.stdout.strip(),
                )
            )
    for tree, r in results.items():
        rows.append(
            f"| {tree} | {statistics.median(x[0] for x in r):.2f} | {statistics.median(x[1] for x in r):.2f} | {r[0][2]} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="imports,stages,backends,e2e")
    parser.add_argument("--work", type=Path, default=Path("/tmp/organseg-bench-speed"))
    parser.add_argument("--baseline", default="0b9de80", help="git revision of the old path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ghz", type=float, default=3.0, help="assumed clock for the fp32 peak")
    parser.add_argument("--cases", default="phantom,real")
    parser.add_argument("--variants", default="baseline,torch,openvino")
    args = parser.parse_args()
    cases = {k: v for k, v in build_cases(args.work).items() if k in args.cases.split(",")}
    print(f"load average at start: {os.getloadavg()}; nproc {os.cpu_count()}")
    parts = args.parts.split(",")
    if "imports" in parts:
        print(part_imports(args.work, args.baseline, args.repeats), flush=True)
    if "stages" in parts:
        print(part_stages(cases, args.repeats, args.threads), flush=True)
    if "backends" in parts:
        print(part_backends(cases, args.repeats, args.threads, args.ghz), flush=True)
    if "e2e" in parts:
        print(part_e2e(cases, args.work, args.baseline, args.repeats, args.variants.split(",")), flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
