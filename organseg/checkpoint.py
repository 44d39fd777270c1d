"""Save and load checkpoints and models safely.

Checkpoints from disk are untrusted: ``torch.load(..., weights_only=True)`` never runs pickled code,
and every failure (a malicious pickle, a truncated file, a foreign state dict) becomes a one-line
``ModelError``. The built-in model is a safetensors file whose metadata carries the resolved config,
so it loads with no pickle at all.

A checkpoint is a dict of plain data and tensors:
``model`` (state_dict), ``config`` (``config_to_dict``), ``epoch``, ``step``, ``fold``, ``best_metric``,
``optimizer``, ``scheduler``, ``rng`` (tensors/ints/lists only), ``organseg_version``.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch

from organseg.config import Config, config_from_dict, config_to_dict
from organseg.errors import ModelError, OrgansegError
from organseg.io import atomic_path
from organseg.vnet import VNet

CHECKPOINT_FORMAT = 1
SAFETENSORS_FORMAT = "organseg-vnet-1"


def build_model(cfg: Config) -> VNet:
    """A freshly initialised VNet shaped by ``cfg.model`` with one output per label."""
    m = cfg.model
    return VNet(
        in_channels=1,
        num_classes=cfg.labels.num_classes,
        filters=m.filters,
        bottleneck=m.bottleneck,
        convs_per_block=m.convs_per_block,
        dropout=m.dropout,
        norm=m.norm,
    )


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` atomically with ``torch.save`` (temp file, then rename)."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without unpickling arbitrary objects; ``ModelError`` if unsafe or invalid."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if "GLOBAL" in str(err):  # it names a function or class to call: code, not weights
            raise ModelError(
                f"{path}: refused to load checkpoint: it holds objects other than weights ({reason})"
            ) from None
        raise ModelError(f"{path}: not a readable checkpoint ({reason})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        text = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: not a readable checkpoint ({text})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ModelError(f"{path}: not an organseg checkpoint (expected keys 'model' and 'config')")
    return ckpt


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    """The useful words of torch's weights-only refusal (its first lines are advice to disable the check)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if "GLOBAL" in line] or [
        line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation"))
    ]
    return useful[0].split(". Please use", 1)[0][:160] if useful else "unsafe content"


def config_of(ckpt: dict, source: str) -> Config:
    try:
        return config_from_dict(ckpt["config"], f"{source} (embedded config)")
    except OrgansegError as err:
        raise ModelError(str(err)) from None


def state_dict_problem(err: BaseException) -> str:
    """The first useful line of a ``load_state_dict`` error (the line after its generic header)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Error(s) in loading state_dict")]
    return (useful or lines or [type(err).__name__])[0][:200]


def model_from_state(state_dict: dict, cfg: Config, source: str) -> VNet:
    """A VNet built from ``cfg`` with ``state_dict`` loaded strictly; ``ModelError`` when they disagree."""
    model = build_model(cfg)
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, KeyError, TypeError) as err:
        raise ModelError(
            f"{source}: weights do not fit the model described by its config ({state_dict_problem(err)})"
        ) from None
    model.eval()
    return model


def model_from_checkpoint(ckpt: dict, source: str = "<checkpoint>") -> tuple[VNet, Config]:
    cfg = config_of(ckpt, source)
    return model_from_state(ckpt["model"], cfg, source), cfg


def save_safetensors_model(
    path: str | Path, model: VNet, cfg: Config, extra: dict | None = None, half: bool = False
) -> None:
    """Write weights + config as safetensors (no pickle), atomically.

    ``half`` stores floating-point tensors as float16 (half the file); loading copies them back into
    the float32 model.
    """
    from safetensors.torch import save_file

    meta = {
        "format": SAFETENSORS_FORMAT,
        "config": json.dumps(config_to_dict(cfg)),
        "extra": json.dumps(extra or {}),
    }
    tensors = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_safetensors_model(path: str | Path) -> tuple[VNet, Config, dict]:
    """Load a safetensors model written by ``save_safetensors_model``; returns (model, config, extra)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: not a readable safetensors model ({first})") from None
    if meta.get("format") != SAFETENSORS_FORMAT or "config" not in meta:
        raise ModelError(f"{path}: not an organseg model (metadata format {meta.get('format')!r})")
    try:
        cfg_dict = json.loads(meta["config"])
        extra = json.loads(meta.get("extra", "{}"))
    except json.JSONDecodeError:
        raise ModelError(f"{path}: model metadata is not valid JSON") from None
    cfg = config_of({"config": cfg_dict}, str(path))
    return model_from_state(tensors, cfg, str(path)), cfg, extra


def export_safetensors(
    checkpoint: str | Path, output: str | Path, extra: dict | None = None, half: bool = False
) -> Path:
    """Convert a training checkpoint into a pickle-free ``.safetensors`` model (weights + config only).

    ``extra`` (JSON-able) is stored in the metadata, e.g. the epoch and validation Dice of the source;
    ``half`` stores float16 weights.
    """
    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt, str(checkpoint))
    info = {"source_epoch": ckpt.get("epoch"), "best_metric": _plain(ckpt.get("best_metric"))}
    save_safetensors_model(output, model, cfg, {**info, **(extra or {})}, half=half)
    return Path(output)


def _plain(value: object) -> object:
    """A JSON-able copy of a metric value (tensors and numpy scalars become floats)."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
