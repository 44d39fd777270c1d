"""Segment liver, kidneys and spleen in CT: one function, ``segment``, that the CLI calls.

Pipeline per case (modules of this package):

1. read the CT (``io.read_image``: NIfTI, NRRD, MHA, DICOM folder or zip) and check that it looks like
   CT in HU;
2. replay the model's own preprocessing (its embedded config) on the body only (``preprocess.py``);
3. sliding-window inference with Gaussian blending, ensemble and optional mirror TTA averaged in
   probability space (``sliding.py``, ``tta.py``);
4. map the probabilities back onto the input's exact grid through world coordinates and take the
   argmax (``invert.py``) -- never by flipping arrays;
5. keep each organ's largest component and fill its holes (``postprocess.py``);
6. write the uint8 mask + sidecars (``io.write_mask``, which asserts the input's shape and affine) and
   the extras (``outputs.py``): per-organ masks, probability maps, statistics, RLE, a PNG preview and
   the run manifest ``<stem>.run.json``.

Decisions worth knowing:

- **Default overlap** comes from the model's config (``infer.overlap``: 0.5 for ``abdomen``, 0.25 for
  ``demo``). ``overlap=0.25`` is the faster setting on CPU (fewer windows, see ``sliding.py``).
- **TTA** is off unless asked for (``tta=True`` or the config's ``infer.tta``): it costs 4x the network
  time on CPU.
- **An empty CT** (nothing above the body threshold, e.g. all -1000 HU) is not an error: the result is
  an empty mask on the input grid with a warning "no body found"; a folder run goes on with the next
  case. **No organ found** likewise gives an empty mask and a warning, never noise.
- **Memory** for a 512 x 512 x 400 CT stays around 1-2 GB: the input is kept in its own dtype (int16);
  only the body crop is resampled to float32 at the model's spacing; probabilities stay on that coarse
  grid and are mapped back slab by slab straight into a uint8 mask (``invert.py``). Only
  ``probabilities=True`` allocates a full-resolution float map (C x input voxels x 4 bytes).

Example:
    >>> result = segment("ct.nii.gz", "out/ct_mask.nii.gz", model="runs/demo", stats=True)
    >>> result.volumes_ml["liver"]
    1043.2
    >>> print(result.summary())
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from organseg import io
from organseg.config import Config, LabelMap, config_to_dict
from organseg.errors import ConfigError, InputError, OutputError
from organseg.fastgzip import GunzipAhead
from organseg.geometry import Grid
from organseg.infer import outputs
from organseg.infer.backends import wrap_networks
from organseg.infer.confidence import organ_confidence, summarize_probabilities, summary_line
from organseg.infer.invert import probabilities_to_input
from organseg.infer.models import check_ensemble
from organseg.infer.postprocess import postprocess_mask, restrict_to_trunk
from organseg.infer.preprocess import prepare
from organseg.infer.shard import is_done, shard_of
from organseg.infer.sliding import predict_probabilities
from organseg.infer.tta import parse_tta
from organseg.modelstore import default_model, load_model_file, resolve_model_files
from organseg.runtime import cpu_threads, resolve_device

__all__ = ["CaseResult", "SegmentResult", "check_ct_intensities", "default_model", "segment"]

logger = logging.getLogger(__name__)

#: Run the network in channels-last-3D memory format (see benchmarks/bench_infer.py for the choice).
CHANNELS_LAST = False


@dataclass
class CaseResult:
    """What ``segment`` did for one input.

    Attributes:
        case: case name (file name without suffix, or the DICOM folder's name).
        input: the input path.
        mask: the multilabel mask written.
        outputs: every file written for this case (mask, sidecars, extras, manifest).
        volumes_ml: organ -> volume in ml (0.0 when not found).
        timings_s: stage -> seconds (read, preprocess, network, invert, postprocess, write).
        warnings: warnings raised for this case (non-CT intensities, no body, no organ, ...).
    """

    case: str
    input: Path
    mask: Path
    outputs: list[Path] = field(default_factory=list)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class SegmentResult:
    """What ``segment`` did: one ``CaseResult`` per input case, plus the model and device used."""

    cases: list[CaseResult]
    models: list[Path]
    device: str
    timings_s: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # cases done by an earlier run (``skip_existing``)

    @property
    def mask(self) -> Path:
        """The mask of the first (for a single input: the only) case."""
        return self.cases[0].mask

    @property
    def paths(self) -> list[Path]:
        return [p for c in self.cases for p in c.outputs]

    @property
    def volumes_ml(self) -> dict[str, float]:
        """Organ volumes of the first (single) case."""
        return self.cases[0].volumes_ml

    @property
    def warnings(self) -> list[str]:
        return [f"{c.case}: {w}" for c in self.cases for w in c.warnings]

    def summary(self) -> str:
        """A few lines for the terminal: model, masks written, organ volumes, warnings."""
        lines = [f"model: {', '.join(map(str, self.models))} on {self.device}"]
        for c in self.cases:
            vols = ", ".join(f"{k} {v:.0f} ml" for k, v in c.volumes_ml.items())
            lines.append(f"{c.case}: wrote {c.mask} ({vols}) in {sum(c.timings_s.values()):.1f} s")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} case(s) already done: {', '.join(self.skipped[:5])}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------- checks


def check_ct_intensities(array: np.ndarray, body_threshold_hu: float = -500.0) -> list[str]:
    """Reasons why ``array`` may not be a CT in Hounsfield units (empty when it looks fine).

    Looks at a strided sample: CT has air (about -1000 HU) around the body, so a scan with no voxel below
    -500 has either no air in view or is not CT in HU (MR, PET, a normalised image). MR-like ranges
    (0..4000, nothing negative) are reported by ``io.read_image(kind="ct")`` already.
    """
    stride = max(1, int(np.ceil((array.size / 2_000_000) ** (1 / 3))))
    view = np.asarray(array[::stride, ::stride, ::stride])
    low, high = float(view.min()), float(view.max())
    reasons = []
    if high <= body_threshold_hu:
        return reasons  # no body at all: segment reports "no body found"
    if low >= 0 and high > 1:
        return reasons  # io.read_image(kind="ct") has said so
    if low > body_threshold_hu:
        reasons.append(
            f"no voxel below {body_threshold_hu:g} HU (range {low:g}..{high:g}): no air in view -- not a CT in "
            "Hounsfield units, or cropped inside the body; the segmentation may be wrong"
        )
    elif high - low < 200:
        reasons.append(
            f"intensities span only {low:g}..{high:g}: this does not look like a CT in Hounsfield units"
        )
    return reasons


# --------------------------------------------------------------------------------------- inputs/outputs


def list_cases(input_path: Path) -> tuple[list[Path], bool]:
    """``(inputs, batch)``: the case paths, and whether ``input_path`` is a folder of CT files."""
    if not input_path.exists():
        raise InputError(f"{input_path}: no such file or folder")
    if input_path.is_file():
        return [input_path], False
    files = sorted(
        p
        for p in input_path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(io.IMAGE_SUFFIXES)
    )
    if files:
        return files, True
    return [input_path], False  # a DICOM series folder


def _option_path(
    option: str | Path | bool | None, stem: Path, default_suffix: str, batch: bool, tag: str
) -> Path | None:
    """Where an optional output goes: ``True`` -> ``<stem>.<tag><default_suffix>``; a path as given
    (single input) or, for a folder of inputs, ``<stem>.<tag><its suffix>`` per case."""
    if option is None or option is False:
        return None
    if option is True:
        return stem.with_name(f"{stem.name}.{tag}{default_suffix}")
    path = Path(option)
    if batch:
        return stem.with_name(f"{stem.name}.{tag}{path.suffix or default_suffix}")
    return path


@dataclass
class _Plan:
    """The files one case will write (checked before any work is done)."""

    case: str
    input: Path
    mask: Path
    stats: Path | None
    rle: Path | None
    preview: Path | None
    manifest: Path


def _plan(input_path: Path, output: Path, stats, rle, preview, overwrite: bool) -> tuple[list[_Plan], bool]:
    inputs, batch = list_cases(input_path)
    to_folder = batch or not io.is_nifti(output)
    if to_folder:
        if output.exists() and not output.is_dir():
            raise OutputError(
                f"{output}: exists and is not a folder (a folder of inputs needs an output folder)"
            )
        if output.suffix.lower() in (".nii", ".gz", ".nrrd", ".mha") and not batch:
            raise OutputError(f"{output}: masks are written as NIfTI; use a .nii.gz file name")
        # The folder is created only once model and inputs have been checked (see segment), so a
        # failing run leaves nothing behind; until then, check that it could be created.
        if not output.exists():
            io.check_writable(output, overwrite=False)
    plans = []
    for path in inputs:
        case = io.case_name(path)
        mask = output / f"{case}.nii.gz" if to_folder else output
        stem = outputs.stem_of(mask)
        plan = _Plan(
            case=case,
            input=path,
            mask=mask,
            stats=_option_path(stats, stem, ".json", batch, "stats"),
            rle=_option_path(rle, stem, ".json", batch, "rle"),
            preview=_option_path(preview, stem, ".png", batch, "preview"),
            manifest=stem.with_name(f"{stem.name}.run.json"),
        )
        for p in (plan.mask, plan.stats, plan.rle, plan.preview, plan.manifest):
            new_folder = to_folder and p is not None and p.parent == output and not output.exists()
            if p is not None and not new_folder:
                io.check_writable(p, overwrite=overwrite)
        for p, kinds in (
            (plan.stats, (".json", ".csv")),
            (plan.rle, (".json", ".csv")),
            (plan.preview, (".png",)),
        ):
            if p is not None and p.suffix.lower() not in kinds:
                raise OutputError(f"{p}: unsupported format {p.suffix!r} (use {' or '.join(kinds)})")
        plans.append(plan)
    return plans, batch


# --------------------------------------------------------------------------------------- segment


#: Modules the first case needs after reading its CT, imported in a background thread meanwhile.
PREFETCH_MODULES = ("monai.inferers", "organseg.transforms")
#: Optional extras that importing MONAI pulls in eagerly and segmentation never uses: matplotlib (its
#: notebook plots) and scipy.signal (ultrasound confidence maps, notch filters). About 0.6 s of MONAI's
#: 1.5 s import on 2 cores (BENCHMARKS.md, "CPU speed, start-up and exit").
LEAN_SKIPPED = ("matplotlib", "scipy.signal")


def _prefetch_imports(lean: bool = False) -> threading.Thread | None:
    """Start importing ``PREFETCH_MODULES`` in a daemon thread; the thread (``None``: nothing to do).

    MONAI takes about 2 s to import; meanwhile the main thread loads the models (safetensors, and
    OpenVINO's compile, which runs in native threads). The caller joins the thread before anything that
    imports MONAI itself: a package imported from two threads at once can see its circular imports
    half-done. ``lean``: MONAI is imported with ``LEAN_SKIPPED`` marked missing (``None`` in
    ``sys.modules``, so its optional imports fall back); the marks are removed when the thread ends, so
    later imports of those modules work as usual."""

    def run() -> None:
        try:
            for name in PREFETCH_MODULES:
                with contextlib.suppress(Exception):  # the main thread's own import reports any error
                    importlib.import_module(name)
        finally:
            for name in blocked:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]

    if all(name in sys.modules for name in PREFETCH_MODULES):
        return None
    blocked = [n for n in LEAN_SKIPPED if n not in sys.modules] if lean and "monai" not in sys.modules else []
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" raises ImportError
    thread = threading.Thread(target=run, name="organseg-prefetch", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block, restoring the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def segment(
    input: str | Path,
    output: str | Path,
    *,
    model: str | Path | None = None,
    folds: Sequence[int] | None = None,
    tta: bool | str | None = None,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    postprocess: bool = True,
    split: bool = False,
    probabilities: bool = False,
    stats: str | Path | bool | None = None,
    rle: str | Path | bool | None = None,
    preview: str | Path | bool | None = None,
    series_uid: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    expected_labels: LabelMap | None = None,
    threads: int | None = None,
    output_type: str | Sequence[str] = "nifti",
    shard: tuple[int, int] | None = None,
    skip_existing: bool = False,
    backend: str = "torch",
    prefetched: GunzipAhead | None = None,
    lean_imports: bool = False,
) -> SegmentResult:
    """Segment one CT (file, DICOM folder or zip) or a folder of CT files; masks land on the input grids.

    Args:
        input: a CT file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.zip`` of DICOM), a DICOM series
            folder, or a folder of CT files (then ``output`` is a folder and each mask is
            ``<output>/<case>.nii.gz``).
        output: mask path (``.nii.gz``/``.nii``) or a folder (``<folder>/<case>.nii.gz``).
        model: run folder, checkpoint ``.pt``, ``.safetensors`` model; ``None`` uses ``default_model()``
            (the built-in model).
        folds: folds of a run folder to ensemble (``None``: all with a checkpoint).
        tta: ``True``/``"mirror"`` mirror TTA, ``"mirror+rot90"``; ``None`` follows the config (off).
        overlap: sliding-window overlap in [0, 1); ``None`` follows the config. 0.25 is the faster setting.
        sw_batch_size: windows per forward pass; ``None`` follows the config.
        postprocess: largest component + hole filling per the config's ``infer.postprocess``.
        split: also write ``<stem>_<organ>.nii.gz`` binary masks.
        probabilities: also write ``<stem>_probabilities.nii.gz`` (4D, channels last).
        stats: per-organ statistics: a ``.json``/``.csv`` path, or ``True`` for ``<stem>.stats.json``.
            For a folder of inputs a path only picks the format: ``<output>/<case>.stats<suffix>``.
        rle: run-length encodings, as ``stats`` (``<stem>.rle.json``).
        preview: PNG rendering of the organs in 3D, as ``stats`` (``<stem>.preview.png``).
        series_uid: DICOM SeriesInstanceUID when a folder or zip holds several series.
        device: ``cpu``, ``cuda``, ``cuda:N``; ``None`` picks CUDA when available.
        overwrite: replace existing outputs (otherwise they are an ``OutputError`` before any work).
        progress: progress bars (windows for one case, cases for a folder).
        expected_labels: the labels the caller needs; a model for other labels is a ``ModelError``.
        threads: CPU threads for torch (``None``: ``runtime.cpu_threads()``, the cores not kept busy by
            other processes); the caller's setting is restored.
            Use fewer on a machine shared with other jobs: OpenMP threads that wait for a busy core spin
            and can make inference several times slower.
        output_type: ``"nifti"`` (default), ``"dicom-seg"`` or both (a list): ``dicom-seg`` needs a DICOM
            folder or zip as input and ``output`` ending in ``.dcm``; the NIfTI mask and the sidecars then
            go beside it (``seg.dcm`` -> ``seg.nii.gz``, ``seg.run.json``). See ``io.dicomseg``.
        backend: where the network runs on a CPU: ``torch`` (default: eager PyTorch, the reference),
            ``auto`` (OpenVINO when ``organseg[fast]`` is installed, else eager), ``openvino``, ``onnx``
            (``infer.backends``). The library default stays eager because OpenVINO's runtime and torch
            training in one process crashed (segfault) in a test run; ``organseg infer``, a process of
            its own, defaults to ``auto``.
        shard: ``(K, N)``: segment only share K of N of a folder of CTs (``infer.shard``: disjoint,
            size-balanced); ``ConfigError`` for a single case.
        skip_existing: skip cases whose run manifest (written last) exists; redo the others, replacing
            the partial outputs a crash left, so a rerun finishes an interrupted batch.
        prefetched: the input ``.nii.gz`` already being inflated in the background
            (``fastgzip.GunzipAhead``, started by ``organseg infer`` before its imports).
        lean_imports: import MONAI without its optional plotting (matplotlib) and ``scipy.signal``
            extras, which segmentation never uses; for a process that only segments (``organseg
            infer``). MONAI's plotting helpers and signal transforms stay unavailable in that process.

    Returns:
        ``SegmentResult`` with the paths written, organ volumes, timings and warnings per case.
    """
    t_start = time.perf_counter()
    input_path, output_path = Path(input), Path(output)
    if overlap is not None and not 0 <= overlap < 1:
        raise ConfigError(f"overlap: must be in [0, 1), got {overlap}")
    if sw_batch_size is not None and sw_batch_size < 1:
        raise ConfigError(f"sw_batch_size: must be >= 1, got {sw_batch_size}")
    types = {output_type} if isinstance(output_type, str) else set(output_type)
    if not types or types - {"nifti", "dicom-seg"}:
        raise ConfigError(f"output_type: expected nifti and/or dicom-seg, got {sorted(types)}")
    dicom_seg = None
    if "dicom-seg" in types:
        from organseg.io.dicomseg import check_dicom_seg_request

        check_dicom_seg_request(input_path, output_path)
        io.check_writable(output_path, overwrite=overwrite)
        dicom_seg, output_path = output_path, output_path.with_suffix(".nii.gz")
    elif output_path.suffix.lower() == ".dcm":
        raise OutputError(f"{output_path}: a .dcm output is a DICOM-SEG: add --output-type dicom-seg")
    plans, batch = _plan(input_path, output_path, stats, rle, preview, overwrite or skip_existing)
    if shard is not None:
        if not batch:
            raise ConfigError(f"{input_path}: --shard needs a folder of CT files; one case cannot be split")
        mine = set(shard_of([p.input for p in plans], *shard))
        plans = [p for p in plans if p.input in mine]
    skipped = [p.case for p in plans if skip_existing and is_done(p.manifest)]
    plans = [p for p in plans if p.case not in skipped]
    overwrite = overwrite or skip_existing  # what is left to do is missing or was cut off
    device = str(resolve_device(device))
    prefetch = _prefetch_imports(lean=lean_imports)
    try:
        model_path = default_model() if model is None else Path(model)
        files = resolve_model_files(model_path, folds)
        nets_cfgs = check_ensemble([load_model_file(f, device) for f in files], files, expected_labels)
        cfg = nets_cfgs[0][1]
        n_threads = threads or cpu_threads()
        nets, backend_used = wrap_networks(
            [n for n, _ in nets_cfgs],
            backend,
            cfg.infer_patch_size,
            n_threads,
            device,
            convert=model is None,  # the built-in model: converted once, on first use
        )
    finally:
        if prefetch is not None:  # the cases import MONAI: never while the thread is importing it
            prefetch.join()
    for plan in plans:
        plan.mask.parent.mkdir(parents=True, exist_ok=True)
    logger.info("segmenting %d case(s) with %s on %s", len(plans), ", ".join(map(str, files)), device)
    mirror, rot90 = parse_tta(cfg.infer.tta if tta is None else tta)
    settings = {
        "overlap": cfg.infer.overlap if overlap is None else float(overlap),
        "sw_batch_size": cfg.infer.sw_batch_size if sw_batch_size is None else int(sw_batch_size),
        "tta": "mirror+rot90" if rot90 else "mirror" if mirror else "off",
        "postprocess": config_to_dict(cfg.infer.postprocess) if postprocess else False,
        "patch_size": list(cfg.infer_patch_size),
        "blend": cfg.infer.blend,
        "channels_last": CHANNELS_LAST,
        "backend": backend_used,
    }
    results = []
    with _threads(n_threads), torch.inference_mode():
        iterator = plans
        if batch and progress:
            from tqdm import tqdm

            iterator = tqdm(plans, desc="cases", unit="case")
        for plan in iterator:
            results.append(
                _segment_case(
                    plan,
                    nets,
                    cfg,
                    files,
                    settings,
                    mirror=mirror,
                    rot90=rot90,
                    postprocess=postprocess,
                    split=split,
                    probabilities=probabilities,
                    series_uid=series_uid,
                    device=device,
                    overwrite=overwrite,
                    progress=progress and not batch,
                    dicom_seg=dicom_seg,
                    nifti="nifti" in types,
                    prefetched=prefetched,
                )
            )
    return SegmentResult(
        cases=results,
        models=files,
        device=str(device),
        timings_s={"total": time.perf_counter() - t_start},
        skipped=skipped,
    )


def label_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Voxels per label id, slab by slab (``np.bincount`` on the whole mask would make an int64 copy)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for a in range(0, mask.shape[0], 32):
        counts += np.bincount(mask[a : a + 32].ravel(), minlength=num_classes)[:num_classes]
    return counts


def _warn(message: str, collected: list[str]) -> None:
    collected.append(message)
    warnings.warn(message, stacklevel=3)


def _segment_case(
    plan: _Plan,
    nets: list,
    cfg: Config,
    model_files: list[Path],
    settings: dict,
    *,
    mirror: bool,
    rot90: bool,
    postprocess: bool,
    split: bool,
    probabilities: bool,
    series_uid: str | None,
    device: str,
    overwrite: bool,
    progress: bool,
    dicom_seg: Path | None = None,
    nifti: bool = True,
    prefetched: GunzipAhead | None = None,
) -> CaseResult:
    timings: dict[str, float] = {}
    notes: list[str] = []
    labels = cfg.labels
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = io.read_image(plan.input, series_uid=series_uid, kind="ct", prefetched=prefetched)
    for w in caught:
        _warn(str(w.message), notes)
    for reason in check_ct_intensities(vol.array, cfg.preprocess.body_threshold_hu):
        _warn(f"{vol.source}: {reason}", notes)
    timings["read"] = time.perf_counter() - t

    t = time.perf_counter()
    native = Grid(vol.shape, np.asarray(vol.affine, dtype=np.float64))
    prep = prepare(vol.array, vol.affine, cfg)
    timings["preprocess"] = time.perf_counter() - t
    prob_map = grid_summary = None
    if prep is None:
        _warn(
            f"{vol.source}: no body found (no voxel above {cfg.preprocess.body_threshold_hu:g} HU); "
            "wrote an empty mask",
            notes,
        )
        mask = np.zeros(vol.shape, dtype=np.uint8)
        if probabilities:
            prob_map = np.zeros((*vol.shape, labels.num_classes), dtype=np.float32)
            prob_map[..., 0] = 1.0
    else:
        t = time.perf_counter()
        probs = predict_probabilities(
            prep.image,
            nets,
            cfg,
            overlap=settings["overlap"],
            sw_batch_size=settings["sw_batch_size"],
            mirror=mirror,
            rot90=rot90,
            device=device,
            channels_last=CHANNELS_LAST,
            progress=progress,
        )
        timings["network"] = time.perf_counter() - t
        if postprocess and prep.trunk is not None:
            t = time.perf_counter()
            restrict_to_trunk(probs, prep.trunk)
            timings["trunk"] = time.perf_counter() - t
        t = time.perf_counter()
        grid_summary = summarize_probabilities(probs, prep.crop.affine)  # per-organ confidence
        timings["confidence"] = time.perf_counter() - t
        t = time.perf_counter()
        mask, prob_map = probabilities_to_input(probs, prep, native, keep_probabilities=probabilities)
        del probs
        timings["invert"] = time.perf_counter() - t
    if postprocess and prep is not None:
        t = time.perf_counter()
        postprocess_mask(mask, labels, cfg.infer.postprocess, voxel_ml=vol.voxel_volume_ml)
        timings["postprocess"] = time.perf_counter() - t

    counts = label_counts(mask, labels.num_classes)
    volumes = {organ: float(counts[i]) * vol.voxel_volume_ml for i, organ in enumerate(labels.names) if i > 0}
    if prep is not None:
        missing = [organ for organ, v in volumes.items() if v == 0]
        if len(missing) == len(volumes):
            _warn(f"{vol.source}: no organ found; wrote an empty mask (is this an abdominal CT?)", notes)
        elif missing:
            _warn(f"{vol.source}: not found: {', '.join(missing)}", notes)
    confidence = {} if grid_summary is None else organ_confidence(grid_summary, labels.names, volumes)
    for organ, conf in confidence.items():
        if conf["low"]:
            _warn(f"{vol.source}: {summary_line(organ, conf)}", notes)

    t = time.perf_counter()
    if mask.shape != vol.shape:  # a bug, not user input: the mask must sit on the input grid
        raise AssertionError(f"mask shape {mask.shape} differs from the input grid {vol.shape}")
    written = io.write_mask(mask, vol, plan.mask, labels, overwrite=overwrite) if nifti else []
    if dicom_seg is not None:
        from organseg.io.dicomseg import write_series_seg

        seg_path, seg_notes = write_series_seg(
            mask, vol.affine, plan.input, series_uid, dicom_seg, labels,
            model_name=model_files[0].stem, task=cfg.task, overwrite=overwrite,
        )  # fmt: skip
        written.append(seg_path)
        for note in seg_notes:
            _warn(note, notes)
    if split:
        written += outputs.write_split(mask, vol, plan.mask, labels, overwrite)
    if prob_map is not None:
        written.append(outputs.write_probabilities(prob_map, vol, plan.mask, overwrite))
        del prob_map
    if plan.stats is not None:
        organ_stats = outputs.organ_stats(mask, vol, labels)
        for organ, conf in confidence.items():
            organ_stats[organ]["confidence"] = conf
        written.append(outputs.write_stats(organ_stats, plan.stats, overwrite, case=plan.case))
    if plan.rle is not None:
        written.append(outputs.write_rle(mask, vol, plan.rle, labels, overwrite, case=plan.case))
    if plan.preview is not None:
        from organseg.rendering import render

        mask_vol = io.Volume(mask, vol.affine, str(plan.mask), vol.header)
        written.append(
            Path(render(mask_vol, plan.preview, labels=labels, overwrite=overwrite, progress=False))
        )
    timings["write"] = time.perf_counter() - t

    manifest = {
        "case": plan.case,
        "input": str(plan.input),
        "input_grid": {
            "shape": list(vol.shape),
            "spacing_mm": list(vol.spacing_mm),
            "orientation": vol.orientation,
            "affine": np.asarray(vol.affine).tolist(),
        },
        "versions": outputs.versions(),
        "models": [str(f) for f in model_files],
        "task": cfg.task,
        "labels": labels.to_dict(),
        "preprocess": config_to_dict(cfg.preprocess),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "settings": settings,
        "network_grid": None
        if prep is None
        else {"shape": list(prep.crop.shape), "affine": prep.crop.affine.tolist()},
        "volumes_ml": volumes,
        "confidence": confidence,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "outputs": [str(p) for p in written] + [str(plan.manifest)],
        "warnings": notes,
    }
    written.append(outputs.write_manifest(plan.manifest, manifest, overwrite))
    return CaseResult(
        case=plan.case,
        input=plan.input,
        mask=plan.mask if nifti else dicom_seg,
        outputs=written,
        volumes_ml=volumes,
        timings_s=timings,
        warnings=notes,
    )
