"""Export a trained model as a MONAI bundle that runs with MONAI alone (no organseg installed).

MONAI Label and MONAI Deploy take models as bundles: a folder with ``configs/metadata.json`` (what the
network takes and returns), ``configs/inference.json`` (the pipeline, as MONAI components wired by
MONAI's ``ConfigParser``) and the network. organseg's own inference is faster and leaner in memory
(``infer/preprocess.py``), but it replays the same MONAI pipeline, so the bundle can be built from MONAI
components only and still give the same masks:

    LoadImaged -> EnsureChannelFirstd -> Orientationd -> Spacingd -> CropForegroundd (HU > body threshold)
    -> ScaleIntensityRanged (HU window -> 0..1) -> SlidingWindowInferer (Gaussian blending)
    -> Activationsd (softmax) -> Invertd (probabilities back onto the input grid) -> AsDiscreted (argmax)
    -> KeepLargestConnectedComponentd + FillHolesd (organseg's postprocessing) -> SaveImaged

Design decisions:

- **The network is TorchScript** (``models/model.ts``, ``torch.jit.trace`` of the VNet at the patch
  size): a ``model.pt`` state dict would need organseg's ``VNet`` class to be instantiated. The sliding
  window only ever feeds patch-size windows, so the trace is valid for every input; the traced network
  is checked against the eager one before anything is written.
- **What a bundle cannot express is refused, with the reason**: an ensemble (a bundle holds one network,
  organseg averages several folds' probabilities), mirror test-time augmentation (no MONAI bundle
  component does it), and a network whose trace differs from the eager model.
- **Offline metadata check**: ``monai.bundle verify_metadata`` downloads the schema named in
  ``metadata.json`` unless ``--filepath`` already holds it. The bundle ships ``docs/metadata_schema.json``,
  organseg's transcription of the mandatory keys of the MONAI Bundle Specification (not MONAI's own schema
  file, which needs the network to fetch); pass it as ``--filepath`` to check offline.
- **Not in the bundle**: organseg's restriction of organs to the trunk and its 1 ml speck rule
  (``infer.postprocess.trunk_only``, ``min_volume_ml``) have no MONAI component; the bundle's README says so.
- **Atomic folder**: the bundle is built in a temporary folder beside the target and renamed into place;
  an existing target is refused without ``overwrite``, and even then only replaced when it is a bundle.

Example:
    >>> export_bundle("organseg_bundle", model=None)   # the built-in model
    PosixPath('organseg_bundle')
    $ python -m monai.bundle run --config_file organseg_bundle/configs/inference.json \\
          --dataset_dir cts/ --output_dir masks/
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from organseg.bundle_docs import LICENSE_TEXT, LOGGING_CONF, MONAI_SCHEMA_URL, bundle_readme, metadata_schema
from organseg.config import Config
from organseg.errors import ModelError, OutputError
from organseg.io.writers import organseg_version
from organseg.modelstore import BUILTIN_MODEL, load_model_file, resolve_model_files
from organseg.transforms import body_margin_voxels

__all__ = ["MONAI_SCHEMA_URL", "export_bundle", "inference_config", "metadata"]

_TRACE_TOL = 1e-4


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def check_expressible(cfg: Config, model_file: Path) -> None:
    """Raise ``ModelError`` naming why the model's inference cannot be written with MONAI bundle components."""
    if cfg.infer.tta:
        raise ModelError(
            f"{model_file}: its config asks for mirror test-time augmentation (infer.tta), which no MONAI "
            "bundle component does: the bundle would not give organseg's masks"
        )


def trace_network(net: torch.nn.Module, cfg: Config) -> torch.jit.ScriptModule:
    """The network traced at the patch size, checked against the eager network on a random window."""
    example = torch.rand(1, 1, *cfg.infer_patch_size)  # organseg networks take one CT channel
    net = net.float().eval()
    with torch.no_grad(), warnings.catch_warnings():
        # VNet pads inputs whose sides are not a multiple of 2**levels; the trace freezes that branch, which
        # is right here: the sliding window feeds only patch-size windows (a multiple, checked in config).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            traced = torch.jit.trace(net, example, check_trace=False)
        except Exception as err:  # torch raises many types for untraceable code
            raise ModelError(
                f"the network cannot be traced to TorchScript ({type(err).__name__}: {err})"
            ) from None
        probe = torch.rand_like(example) * 2 - 0.5
        diff = float((traced(probe) - net(probe)).abs().max())
    if not diff <= _TRACE_TOL:
        raise ModelError(f"the TorchScript trace differs from the network by {diff:.3g} on a test window")
    return traced


def inference_config(cfg: Config, bundle_root: str | Path) -> dict:
    """``configs/inference.json``: the organseg inference pipeline as MONAI components (ConfigParser syntax).

    ``bundle_root`` is written as an absolute path so the bundle runs from any working directory; a moved
    bundle takes ``--bundle_root NEW_PLACE`` on the command line.
    """
    p = cfg.preprocess
    lo, hi = (float(v) for v in p.hu_window)
    organ_ids = list(range(1, cfg.labels.num_classes))
    pre: list[dict] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": p.orientation, "labels": None},
        {
            "_target_": "Spacingd",
            "keys": "image",
            "pixdim": [float(s) for s in p.spacing_mm],
            "mode": "bilinear",
            "dtype": "$np.float32",
        },
    ]
    if p.crop_foreground:
        pre.append(
            {
                "_target_": "CropForegroundd",
                "keys": "image",
                "source_key": "image",
                "select_fn": f"$lambda x: x > {float(p.body_threshold_hu)!r}",
                "margin": list(body_margin_voxels(cfg)),
                "allow_smaller": True,
            }
        )
    if p.normalization == "window":
        pre.append(
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": lo,
                "a_max": hi,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            }
        )
    else:  # zscore: clip to the window, then zero mean / unit sd (transforms.hu_normalisation)
        pre += [
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": lo,
                "a_max": hi,
                "b_min": lo,
                "b_max": hi,
                "clip": True,
            },
            {"_target_": "NormalizeIntensityd", "keys": "image"},
        ]
    post: list[dict] = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": False,
            "to_tensor": True,
        },
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]
    if cfg.infer.postprocess.largest_component:
        post.append(
            {
                "_target_": "KeepLargestConnectedComponentd",
                "keys": "pred",
                "applied_labels": organ_ids,
                "independent": True,
                "connectivity": 3,
            }
        )
    if cfg.infer.postprocess.fill_holes:
        post.append({"_target_": "FillHolesd", "keys": "pred", "applied_labels": organ_ids})
    post.append(
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "seg",
            "output_ext": ".nii.gz",
            "output_dtype": "$np.uint8",
            "resample": False,
            "separate_folder": False,
            "print_log": False,
        }
    )
    return {
        "imports": ["$import glob", "$import os", "$import numpy as np", "$import torch"],
        "bundle_root": str(Path(bundle_root).resolve()),
        "dataset_dir": "$os.getcwd()",
        "output_dir": "$os.path.join(os.getcwd(), 'organseg_masks')",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')) + glob.glob(os.path.join(@dataset_dir, '*.nii')))",
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location=@device)",
        "network": "$@network_def.eval()",
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': f} for f in @datalist]",
            "transform": "@preprocessing",
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(cfg.infer_patch_size),
            "sw_batch_size": int(cfg.infer.sw_batch_size),
            "overlap": float(cfg.infer.overlap),
            "mode": cfg.infer.blend,
            # how a window sticking out of the body crop is filled (organseg's infer.padding; configs from
            # before that field existed load with its default)
            "padding_mode": cfg.infer.padding,
        },
        "postprocessing": {"_target_": "Compose", "transforms": post},
        # One case: the window batch dimension is added for the inferer and removed for the postprocessing.
        "predict": "$lambda d: @postprocessing(dict(d, pred=@inferer(d['image'].as_tensor()[None].to(@device), @network)[0].cpu()))",
        "initialize": ["$torch.set_grad_enabled(False)"],
        "run": ["$[@predict(d) for d in @dataset]"],
        "finalize": [],
    }


def metadata(cfg: Config, model_file: Path) -> dict:
    """``configs/metadata.json``: versions, task, and the network's data format (channels, spacing, HU window,
    label names) in the MONAI Bundle Specification's keys."""
    p = cfg.preprocess
    patch = list(cfg.infer_patch_size)
    names = {str(i): name for i, name in enumerate(cfg.labels.names)}
    version = organseg_version()
    builtin = model_file.resolve() == BUILTIN_MODEL.resolve()
    source = (
        "organseg's synthetic abdomens only (organseg.phantom); no real image was used for training"
        if builtin
        else f"organseg training run ({model_file}); see its config.yaml for the dataset"
    )
    window = f"HU clipped to {p.hu_window[0]:g}..{p.hu_window[1]:g}"
    scaled = f"{window} and scaled to 0..1" if p.normalization == "window" else f"{window}, then z-scored"
    return {
        "schema": MONAI_SCHEMA_URL,
        "version": version,
        "changelog": {version: f"exported by organseg {version} from {model_file.name}"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        # MONAI >= 1.2 reads required_packages_version (optional_packages_version is its deprecated name)
        "required_packages_version": {
            p_: _version(p_) for p_ in ("nibabel", "scipy", "scikit-image", "fire")
        },
        "name": f"organseg {cfg.task}",
        "task": "Segmentation of " + ", ".join(cfg.labels.names[1:]) + " in abdominal CT",
        "description": (
            f"organseg VNet ({model_file.name}, task {cfg.task!r}) exported as TorchScript with its inference "
            f"pipeline as MONAI components: reorient to {p.orientation}, resample to "
            f"{'x'.join(f'{s:g}' for s in p.spacing_mm)} mm, crop to the body (HU > {p.body_threshold_hu:g}), "
            f"{scaled}, {'x'.join(map(str, patch))} sliding windows, softmax, back onto the input grid, argmax, "
            "largest component and hole filling per organ."
        ),
        "authors": "organseg",
        "copyright": "Copyright (c) organseg contributors",
        "license": "Apache-2.0 (see LICENSE)",
        "data_source": source,
        "data_type": "nibabel",
        "image_classes": f"single channel CT in Hounsfield units (NIfTI), {scaled} inside the pipeline",
        "label_classes": ", ".join(f"{i} {n}" for i, n in names.items()),
        "pred_classes": f"{len(names)} channels softmax; the saved mask holds the label ids "
        + ", ".join(f"{i} {n}" for i, n in names.items()),
        "intended_use": "Research. Not a medical device; not for diagnosis.",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "value_range": [0, 1] if p.normalization == "window" else [],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                    "orientation": p.orientation,
                    "pixdim_mm": [float(s) for s in p.spacing_mm],
                    "hu_window": [float(v) for v in p.hu_window],
                    "normalization": p.normalization,
                    "body_threshold_hu": float(p.body_threshold_hu),
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "labels",
                    "num_channels": len(names),
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": names,
                }
            },
        },
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def export_bundle(
    out_dir: str | Path, model: str | Path | None = None, fold: int | None = None, overwrite: bool = False
) -> Path:
    """Write a MONAI bundle for ``model`` (run folder, checkpoint, .safetensors; ``None``: built-in) to ``out_dir``.

    Args:
        out_dir: the bundle folder to create (refused when it exists, unless ``overwrite`` and it is a
            bundle folder or empty).
        model: the model, as for ``organseg infer --model``; ``None`` or ``"builtin"`` is the built-in model.
        fold: the fold of a run folder (a bundle holds one network).
        overwrite: replace an existing bundle folder.

    Raises:
        ModelError: the model cannot be expressed as a bundle (ensemble, TTA, untraceable network).
        OutputError: ``out_dir`` exists (without ``overwrite``), is not a bundle, or cannot be written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not overwrite:
            raise OutputError(f"{out_dir}: exists (use --overwrite to replace it)")
        if not out_dir.is_dir() or (
            any(out_dir.iterdir()) and not (out_dir / "configs" / "metadata.json").is_file()
        ):
            raise OutputError(f"{out_dir}: exists and is not a MONAI bundle folder; refusing to replace it")
    parent = out_dir.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"{out_dir}: the folder {parent} does not exist")
    model = None if model in (None, "builtin") else Path(model)
    files = resolve_model_files(model, None if fold is None else [fold])
    if len(files) > 1:
        raise ModelError(
            f"{model}: an ensemble of {len(files)} folds; a MONAI bundle holds one network and its "
            "components cannot average several networks' probabilities: pick one with --fold K"
        )
    net, cfg = load_model_file(files[0], "cpu")
    check_expressible(cfg, files[0])
    traced = trace_network(net, cfg)
    meta = metadata(cfg, files[0])
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    except OSError as err:
        raise OutputError(f"{out_dir}: cannot create a folder in {parent} ({err.strerror or err})") from err
    try:
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir()
        _write_json(tmp / "configs" / "metadata.json", meta)
        _write_json(tmp / "configs" / "inference.json", inference_config(cfg, out_dir))
        _write_json(tmp / "docs" / "metadata_schema.json", metadata_schema())
        (tmp / "configs" / "logging.conf").write_text(LOGGING_CONF, encoding="utf-8")
        torch.jit.save(traced, str(tmp / "models" / "model.ts"))
        (tmp / "docs" / "README.md").write_text(bundle_readme(cfg, files[0], meta), encoding="utf-8")
        (tmp / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
        (tmp / "docs" / "license.txt").write_text(LICENSE_TEXT, encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=parent))
            os.replace(out_dir, old / "bundle")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except OSError as err:
        raise OutputError(f"{out_dir}: cannot write the bundle ({err.strerror or err})") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
