"""The ``organseg`` command line: parse options, call the API, turn OrgansegError into exit codes.

Every wrong input ends in one line ``organseg: error: <file>: <problem>`` on stderr and a non-zero
exit; ``organseg --debug <command>`` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

import organseg
from organseg.errors import ConfigError, OrgansegError
from organseg.version import __version__

if TYPE_CHECKING:
    from organseg.labels import LabelMap

EXAMPLES = {
    "synth": "organseg synth --out data/phantoms --n 20 --seed 0",
    "train": "organseg train --config demo --data data/phantoms --run runs/demo --fold 0",
    "infer": "organseg infer --input ct.nii.gz --output mask.nii.gz --stats stats.json",
    "evaluate": "organseg evaluate --pred mask.nii.gz --ref seg.nii.gz --ref-map totalsegmentator",
    "render": "organseg render --input mask.nii.gz --output organs.mp4 --preview organs.png",
    "report": "organseg report --mask mask.nii.gz --ct ct.nii.gz --output report.html",
    "demo": "organseg demo --out demo-out",
}


def _epilog(name: str) -> str:
    return f"\b\nExample:\n  {EXAMPLES[name]}"


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size: expected WIDTHxHEIGHT like 720x720, got {text!r}") from None
    if w < 16 or h < 16:
        raise ConfigError(f"--size: each side must be at least 16 pixels, got {text!r}")
    return w, h


def _parse_overrides(pairs: tuple[str, ...]) -> list[tuple[str, object]]:
    import yaml

    out = []
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set: expected KEY=VALUE like train.epochs=5, got {pair!r}")
        key, value = pair.split("=", 1)
        out.append((key.strip(), yaml.safe_load(value)))
    return out


# --------------------------------------------------------------------------------------- commands
# What ``organseg train`` / ``organseg evaluate`` do, as plain functions (tests call them directly): they
# resolve options, call the API, print, and turn an interrupt into an exit code. Only the CLI prints.


def train_command(
    config: str | Path = "abdomen",
    data_dir: Path | None = None,
    run_dir: Path | None = None,
    fold: int | None = None,
    all_folds: bool = False,
    resume_dir: Path | None = None,
    epochs: int | None = None,
    overrides: Sequence[tuple[str, object]] = (),
    device: str | None = None,
    dry_run: bool = False,
) -> Path | None:
    """What ``organseg train`` does; a resumed run uses the config saved in its folder."""
    from organseg.config import load_config, replace_path
    from organseg.modelstore import RUN_MARKER
    from organseg.training import TrainingInterrupted, check_run_dir
    from organseg.training import dry_run as describe
    from organseg.training.distributed import from_main, session

    if resume_dir is not None:
        run_dir = check_run_dir(resume_dir)
        cfg = load_config(run_dir / "config.yaml")
    else:
        cfg = load_config(config)
    for key, value in overrides:
        cfg = replace_path(cfg, key, value)
    if epochs is not None:
        cfg = replace_path(cfg, "train.epochs", epochs)
    if dry_run:
        describe(cfg, data_dir)
        return None
    if run_dir is None:
        run_dir = Path("runs") / f"{cfg.task}-{datetime.now():%Y%m%d-%H%M%S}"
    if all_folds:
        folds: int | Sequence[int] | str = "all"
    elif fold is not None:
        folds = fold
    elif resume_dir is not None:
        folds = json.loads((run_dir / RUN_MARKER).read_text(encoding="utf-8")).get("folds", [0])
    else:
        folds = 0
    with session(device) as ctx:  # under torchrun: DDP over its processes; else one process
        run_dir = from_main(run_dir, ctx)  # the ranks may have read the clock in different seconds
        try:
            organseg.train(
                cfg, data_dir, run_dir, folds=folds, resume=resume_dir is not None, device=device, dist=ctx
            )
        except TrainingInterrupted as err:
            print(f"organseg: {err}", file=sys.stderr)
            raise SystemExit(130) from None
    if ctx.is_main:
        print(f"run folder: {run_dir}")
    return run_dir


def evaluate_command(
    pred: str | Path,
    ref: str | Path,
    *,
    ref_map: str | None = None,
    pred_map: str | None = None,
    beta: float = 0.5,
    out: str | Path | None = None,
    overwrite: bool = False,
    labels: LabelMap | None = None,
    echo: Callable[[str], object] = print,
) -> dict:
    """What ``organseg evaluate`` does: evaluate a file pair or two folders, print the table, write ``out``."""
    from organseg import metrics
    from organseg.io import check_writable
    from organseg.labels import LabelMap

    pred, ref = Path(pred), Path(ref)
    if out is not None:
        check_writable(out, overwrite=overwrite)
        metrics.check_metrics_format(Path(out))
    kwargs = dict(labels=labels or LabelMap(), ref_map=ref_map, pred_map=pred_map, beta=beta)
    if pred.is_dir() and ref.is_dir() and metrics.mask_files(pred):
        result = metrics.evaluate_folder(pred, ref, **kwargs)
    else:
        result = organseg.evaluate(pred, ref, **kwargs)
    echo(metrics.format_table(result))
    if out is not None:
        metrics.write_metrics(result, out, overwrite=overwrite, case=metrics.case_name(pred) or pred.name)
        echo(f"wrote {out}")
    return result


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="organseg")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Segment liver, kidneys and spleen in abdominal CT; train models; render 3D videos."""
    ctx.obj = {"debug": debug}
    _refuse_torchrun(ctx.invoked_subcommand)


def _torchrun() -> bool:
    """Launched by ``torchrun`` with more than one process."""
    import os

    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def _refuse_torchrun(command: str | None) -> None:
    """Under ``torchrun`` only ``train`` and ``infer`` split their work; any other command says so once."""
    import os

    world = os.environ.get("WORLD_SIZE", "1")
    if not _torchrun() or command in (None, "train", "infer"):
        return
    if os.environ.get("RANK", "0") != "0":
        sys.exit(ConfigError.exit_code)  # rank 0 prints the one line
    raise ConfigError(
        f"torchrun: 'organseg {command}' cannot be split over {world} processes; run it as one process "
        "(only train and infer run under torchrun)"
    )


@cli.command(epilog=_epilog("synth"))
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Dataset folder to write."
)
@click.option(
    "--n", "-n", "n", default=8, show_default=True, type=click.IntRange(1, 100000), help="Number of cases."
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Seed; the same seed gives the same data."
)
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder.")
@click.option(
    "--from-labels",
    "from_labels",
    type=click.Path(path_type=Path),
    help="Render from a label map instead: a folder of <structure>.nii.gz masks or a multilabel file.",
)
@click.option(
    "--classes", type=click.Path(path_type=Path), help="Class table JSON (id -> name) of a multilabel map."
)
@click.option(
    "--spacing", "spacing_mm", default=3.0, show_default=True, type=click.FloatRange(0.5, 10),
    help="Voxel size (mm) of --from-labels cases.",
)  # fmt: skip
def synth(
    out_dir: Path,
    n: int,
    seed: int,
    overwrite: bool,
    from_labels: Path | None,
    classes: Path | None,
    spacing_mm: float,
) -> None:
    """Write synthetic abdominal CT phantoms with ground truth (MSD layout).

    With --from-labels, the anatomy comes from a TotalSegmentator-style label map (deformed, rescaled and
    cropped anew for each case) and the appearance from the phantoms' randomized CT model.
    """
    if from_labels is not None:
        from organseg.phantom.labelmaps_dataset import synthesize_from_labels

        paths = synthesize_from_labels(
            from_labels, out_dir, n=n, seed=seed, classes=classes, overwrite=overwrite, spacing_mm=spacing_mm
        )
        click.echo(f"wrote {len(paths)} cases to {out_dir}")
        return
    paths = organseg.synthesize(out_dir, n=n, seed=seed, overwrite=overwrite)
    click.echo(f"wrote {len(paths)} cases to {out_dir}")


@cli.command(epilog=_epilog("train"))
@click.option(
    "--config", "config_name", default="abdomen", show_default=True, help="Config name or YAML path."
)
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Labelled dataset folder.")
@click.option(
    "--run", "run_dir", type=click.Path(path_type=Path), help="Run folder (default runs/<task>-<time>)."
)
@click.option("--fold", type=int, default=None, help="Train one fold (0-based).")
@click.option("--folds", "all_folds", type=click.Choice(["all"]), default=None, help="Train every fold.")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), help="Continue an interrupted run.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override train.epochs.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present).")
@click.option("--dry-run", is_flag=True, help="Print model size, FLOPs and data summary; do not train.")
def train(
    config_name: str,
    data_dir: Path | None,
    run_dir: Path | None,
    fold: int | None,
    all_folds: str | None,
    resume_dir: Path | None,
    epochs: int | None,
    overrides: tuple[str, ...],
    device: str | None,
    dry_run: bool,
) -> None:
    """Train the VNet with weighted Dice+Focal loss on k-fold splits."""
    train_command(
        config=config_name,
        data_dir=data_dir,
        run_dir=run_dir,
        fold=fold,
        all_folds=all_folds == "all",
        resume_dir=resume_dir,
        epochs=epochs,
        overrides=_parse_overrides(overrides),
        device=device,
        dry_run=dry_run,
    )


@cli.command(epilog=_epilog("infer"))
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path),
    help="CT file, DICOM folder/zip, or a folder of CTs.",
)
@click.option(
    "--output", "output_path", required=True, type=click.Path(path_type=Path), help="Mask file (or folder)."
)
@click.option(
    "--model", default=None, help="Run folder, checkpoint or .safetensors (default: built-in model)."
)
@click.option("--folds", default=None, help="Folds to ensemble, e.g. 0,1,2 (default: all in the run).")
@click.option(
    "--series", "series_uid", default=None, help="DICOM SeriesInstanceUID when a folder holds several."
)
@click.option("--tta/--no-tta", default=None, help="Mirror test-time augmentation (slower).")
@click.option("--overlap", type=click.FloatRange(0, 0.95), default=None, help="Sliding-window overlap.")
@click.option("--sw-batch-size", type=click.IntRange(1), default=None, help="Windows per forward pass.")
@click.option(
    "--no-postprocess", is_flag=True, help="Keep every component (no largest-component, no hole fill)."
)
@click.option("--split", is_flag=True, help="Also write one binary mask per organ.")
@click.option("--probabilities", is_flag=True, help="Also write float16 probability maps.")
@click.option(
    "--stats", type=click.Path(path_type=Path), default=None, help="Per-organ statistics (.json or .csv)."
)
@click.option(
    "--rle", type=click.Path(path_type=Path), default=None, help="Run-length encodings (.json or .csv)."
)
@click.option(
    "--preview", type=click.Path(path_type=Path), default=None, help="PNG preview of the organs in 3D."
)
@click.option(
    "--output-type",
    "output_types",
    multiple=True,
    type=click.Choice(["nifti", "dicom-seg"]),
    help="nifti (default) and/or dicom-seg (repeat for both; dicom-seg needs a DICOM input and a .dcm --output).",
)
@click.option(
    "--report", "report_path", type=click.Path(path_type=Path), default=None, help="Interactive HTML report."
)
@click.option("--device", default=None, help="cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option(
    "--shard", default=None, metavar="K/N", help="Segment share K (0..N-1) of N of a folder (SLURM arrays)."
)
@click.option("--skip-existing", is_flag=True, help="Skip cases already done (their .run.json exists).")
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "openvino", "onnx"]),
    default="auto",
    envvar="ORGANSEG_BACKEND",
    show_default=True,
    help="Where the network runs on a CPU (openvino: pip install organseg[fast]); env ORGANSEG_BACKEND.",
)
def infer(
    input_path: Path,
    output_path: Path,
    model: str | None,
    folds: str | None,
    series_uid: str | None,
    tta: bool | None,
    overlap: float | None,
    sw_batch_size: int | None,
    no_postprocess: bool,
    split: bool,
    probabilities: bool,
    stats: Path | None,
    rle: Path | None,
    preview: Path | None,
    output_types: tuple[str, ...],
    report_path: Path | None,
    device: str | None,
    overwrite: bool,
    shard: str | None,
    skip_existing: bool,
    backend: str,
) -> object:
    """Segment a CT: sliding-window inference, mask written on the input's exact grid."""
    launched = _torchrun()
    # Inflate a single .nii.gz input while torch and MONAI are imported (``fastgzip``).
    ahead = None
    if (
        input_path.name.lower().endswith(".nii.gz")
        and input_path.is_file()
        and shard is None
        and not launched
    ):
        from organseg.fastgzip import GunzipAhead

        ahead = GunzipAhead(input_path)
    if report_path is not None:
        from organseg.report import check_report_path

        check_report_path(report_path, overwrite)

    fold_list = None
    if folds:
        try:
            fold_list = [int(f) for f in folds.split(",")]
        except ValueError:
            raise ConfigError(f"--folds: expected comma-separated fold numbers, got {folds!r}") from None
    common = dict(
        model=model,
        folds=fold_list,
        tta=tta,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        postprocess=not no_postprocess,
        split=split,
        probabilities=probabilities,
        stats=stats,
        rle=rle,
        preview=preview,
        series_uid=series_uid,
        overwrite=overwrite,
        output_type=list(output_types) or "nifti",
        backend=backend,
    )
    if shard is not None or launched:  # one share of a folder per process, then one manifest
        from organseg.infer.shard import parse_shard, segment_share
        from organseg.training.distributed import session

        parts = parse_shard(shard) if shard is not None else None
        with session(device) as dist_ctx:
            result = segment_share(
                input_path, output_path, shard=parts, ctx=dist_ctx, device=str(dist_ctx.device), **common
            )
    else:
        result = organseg.segment(
            input_path,
            output_path,
            device=device,
            skip_existing=skip_existing,
            prefetched=ahead,
            lean_imports=True,  # this process only segments
            **common,
        )
    summary = getattr(result, "summary", None)
    click.echo(summary() if callable(summary) else f"wrote {output_path}")
    if report_path is not None:
        from organseg.report import reports_after_segment

        for page in reports_after_segment(result, report_path, overwrite):
            click.echo(f"wrote {page}")
    return None if launched else SKIP_TEARDOWN


@cli.command(epilog=_epilog("evaluate"))
@click.option("--pred", required=True, type=click.Path(path_type=Path), help="Predicted mask (or folder).")
@click.option("--ref", required=True, type=click.Path(path_type=Path), help="Reference mask (or folder).")
@click.option(
    "--ref-map", default=None, help="Reference label ids: totalsegmentator, flare22, organseg or src:dst,..."
)
@click.option("--pred-map", default=None, help="Prediction label ids, as --ref-map (default organseg).")
@click.option(
    "--beta", type=click.FloatRange(0, min_open=True), default=0.5, show_default=True, help="F-beta's beta."
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write results as .json or .csv.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def evaluate(
    pred: Path,
    ref: Path,
    ref_map: str | None,
    pred_map: str | None,
    beta: float,
    out: Path | None,
    overwrite: bool,
) -> None:
    """Per-organ Dice, IoU, precision, recall, F-beta, HD95, NSD and volumes, in physical space."""
    evaluate_command(
        pred=pred, ref=ref, ref_map=ref_map, pred_map=pred_map, beta=beta, out=out, overwrite=overwrite
    )


@cli.command(epilog=_epilog("render"))
@click.option(
    "--input", "mask_path", required=True, type=click.Path(path_type=Path), help="Label mask NIfTI."
)
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(path_type=Path),
    help=".mp4 video or .png still.",
)
@click.option(
    "--frames", default=72, show_default=True, type=click.IntRange(1, 3600), help="Frames in a 360° orbit."
)
@click.option("--fps", default=24, show_default=True, type=click.IntRange(1, 120), help="Frames per second.")
@click.option("--size", default="720x720", show_default=True, help="WIDTHxHEIGHT in pixels.")
@click.option("--title", default=None, help="Title shown in the video.")
@click.option(
    "--ct",
    "ct_path",
    type=click.Path(path_type=Path),
    default=None,
    help="CT to show an axial slice under the organs.",
)
@click.option("--preview", type=click.Path(path_type=Path), default=None, help="Also write frame 0 as PNG.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def render(
    mask_path: Path,
    output_path: Path,
    frames: int,
    fps: int,
    size: str,
    title: str | None,
    ct_path: Path | None,
    preview: Path | None,
    overwrite: bool,
) -> None:
    """Render the organs of a mask as smooth 3D meshes in a rotating MP4 (headless)."""
    out = organseg.render(
        mask_path,
        output_path,
        frames=frames,
        fps=fps,
        size=_parse_size(size),
        title=title,
        ct=ct_path,
        preview=preview,
        overwrite=overwrite,
    )
    click.echo(f"wrote {out}")


@cli.command(epilog=_epilog("report"))
@click.option("--mask", "mask_path", required=True, type=click.Path(path_type=Path), help="Label mask.")
@click.option(
    "--ct", "ct_path", required=True, type=click.Path(path_type=Path), help="The CT (file or DICOM)."
)
@click.option("--output", "output_path", required=True, type=click.Path(path_type=Path), help=".html report.")
@click.option("--manifest", type=click.Path(path_type=Path), default=None, help="Run manifest (.run.json).")
@click.option(
    "--label-map", default=None, help="Mask label ids if not organseg's: totalsegmentator, 5:liver,..."
)
@click.option("--title", default=None, help="Heading of the report.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
def report(
    mask_path: Path,
    ct_path: Path,
    output_path: Path,
    manifest: Path | None,
    label_map: str | None,
    title: str | None,
    overwrite: bool,
) -> None:
    """One self-contained HTML page: organs in 3D, volumes and HU with reference ranges, slices."""
    from organseg.report import build_report

    out = build_report(
        mask_path,
        ct_path,
        output_path,
        manifest=manifest,
        label_map=label_map,
        title=title,
        overwrite=overwrite,
    )
    click.echo(f"wrote {out}")


@cli.command(epilog=_epilog("demo"))
@click.option(
    "--out",
    "out_dir",
    default=Path("demo-out"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for everything the demo makes.",
)
@click.option("--n", "n_cases", default=None, type=click.IntRange(3), help="Phantoms to synthesize.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override the demo's epochs.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Reuse a non-empty --out folder.")
def demo(out_dir: Path, n_cases: int | None, epochs: int | None, device: str | None, overwrite: bool) -> None:
    """Synthesize phantoms, train, infer a held-out case, evaluate and render: the whole thing on a CPU."""
    report = organseg.demo(out_dir, n_cases=n_cases, epochs=epochs, device=device, overwrite=overwrite)
    dice = report.get("dice", {})
    click.echo("held-out Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    click.echo(f"report: {Path(out_dir) / 'report.json'}")


@cli.command(
    epilog="\b\nExample:\n  organseg export --model runs/demo/fold_0/checkpoint_best.pt --output demo.safetensors"
    "\n  organseg export --bundle organseg_bundle --model builtin"
)
@click.option(
    "--model",
    "checkpoint",
    default=None,
    type=click.Path(path_type=Path),
    help="A .pt checkpoint, fold or run folder ('builtin' or none with --bundle: the built-in model).",
)
@click.option(
    "--fold", type=int, default=None, help="Fold of a run folder (default: the only or first fold)."
)
@click.option(
    "--output",
    "output_path",
    default=None,
    type=click.Path(path_type=Path),
    help="The .safetensors file to write.",
)
@click.option(
    "--bundle",
    "bundle_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="Write a MONAI bundle folder instead (runs with MONAI alone; see its docs/README.md).",
)
@click.option(
    "--half", is_flag=True, help="Store the weights as float16 (half the size; loaded back as float32)."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def export(
    checkpoint: Path | None,
    fold: int | None,
    output_path: Path | None,
    bundle_dir: Path | None,
    half: bool,
    overwrite: bool,
) -> None:
    """Export a trained model as pickle-free safetensors (weights + config), or as a MONAI bundle."""
    from organseg.checkpoint import export_safetensors
    from organseg.io import check_writable
    from organseg.modelstore import resolve_model_files

    if (output_path is None) == (bundle_dir is None):
        raise ConfigError("export: give either --output FILE.safetensors or --bundle DIR")
    if bundle_dir is not None:
        from organseg.bundle import export_bundle

        if half:
            raise ConfigError("--half: applies to --output .safetensors, not to a bundle")
        model = None if checkpoint is None or str(checkpoint) == "builtin" else checkpoint
        click.echo(f"wrote MONAI bundle {export_bundle(bundle_dir, model, fold=fold, overwrite=overwrite)}")
        return
    if checkpoint is None:
        raise ConfigError("--model: required with --output")
    if output_path.suffix != ".safetensors":
        raise ConfigError(f"{output_path}: the output must end in .safetensors")
    check_writable(output_path, overwrite=overwrite)
    files = resolve_model_files(checkpoint, None if fold is None else [fold])
    out = export_safetensors(files[0], output_path, half=half)
    click.echo(f"wrote {out} (from {files[0]})")


@cli.command()
@click.option(
    "--runs",
    "runs_dir",
    default=Path("runs"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where local runs live.",
)
def models(runs_dir: Path) -> None:
    """List the built-in model and local training runs."""
    from organseg.modelstore import list_models

    for line in list_models(runs_dir):
        click.echo(line)


def _register_ink() -> None:
    """``organseg ink ...``: the ink task's command group lives in organseg/ink/commands.py (why: see there)."""
    from organseg.ink.commands import ink

    cli.add_command(ink)


_register_ink()

_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


#: Returned by a command whose work is all written and closed: ``main`` then ends the process at once.
#: Tearing down an interpreter that imported torch, MONAI and OpenVINO takes 0.7 s on 2 cores (freeing
#: thousands of modules), 10 % of ``organseg infer`` on a 512 x 512 x 300 CT (BENCHMARKS.md, "CPU speed,
#: start-up and exit"). Only ``main()`` without arguments acts on it: never click's test runner, nor a
#: caller that passes ``argv``.
SKIP_TEARDOWN = object()


def _exit_now() -> None:
    """Flush what the process printed or logged, then exit 0 without interpreter teardown."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed memory instead of returning it to the kernel (Linux only).

    glibc maps every allocation above 32 MB afresh and unmaps it on free, so each large temporary
    (torch's window activations, the masks of a 512 x 512 x 300 CT) is faulted in again, 4 KB at a
    time. With the mmap and trim thresholds at 1 GiB the process keeps and reuses its freed pages:
    eager inference of that CT 3.0 -> 1.8 s, postprocessing 0.86 -> 0.41 s, peak RSS about +0.1 GB
    (BENCHMARKS.md, "CPU speed, start-up and exit"). Only the CLI does this: it owns its process, a
    library caller keeps its own allocator settings.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, print OrgansegErrors as one line, exit non-zero.

    ``argv=None`` (the ``organseg`` script, ``python -m organseg``) means this process is the command's
    own: then malloc keeps freed memory (``keep_freed_memory``) and a command that returns
    ``SKIP_TEARDOWN`` ends the process at once. Called with an explicit ``argv`` (tests, other
    programs), ``main`` leaves the process as it is and returns.
    """
    own_process = argv is None
    args = sys.argv[1:] if argv is None else argv
    if own_process:
        keep_freed_memory()
    debug = "--debug" in args
    try:
        done = cli.main(args=args, prog_name="organseg", standalone_mode=False)
        if own_process and done is SKIP_TEARDOWN:
            _exit_now()
    except click.exceptions.Abort:
        click.echo("organseg: interrupted", err=True)
        sys.exit(130)
    except _NO_ARGS_IS_HELP as err:  # a bare `organseg` or `organseg <command>`: the help is the answer
        err.show()
        sys.exit(err.exit_code)
    except click.ClickException as err:
        # One line like every other error; click's own format is usage, hint and message on three lines.
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        click.echo(f"organseg: error: {' '.join(err.format_message().split())}{hint}", err=True)
        sys.exit(err.exit_code)
    except OrgansegError as err:
        if debug:
            raise
        click.echo(f"organseg: error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("organseg: interrupted", err=True)
        sys.exit(130)
    except MemoryError:
        if debug:
            raise
        click.echo(
            "organseg: error: out of memory (try a coarser spacing or a smaller --sw-batch-size)", err=True
        )
        sys.exit(75)
    except Exception as err:  # a bug: keep the promise of one line, point to --debug
        if debug:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        click.echo(
            f"organseg: internal error: {type(err).__name__}: {first} (rerun with --debug for the traceback)",
            err=True,
        )
        sys.exit(70)


if __name__ == "__main__":
    main()
