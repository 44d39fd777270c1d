"""Where the network's forward pass runs on a CPU: eager PyTorch, OpenVINO or ONNX Runtime.

``wrap_networks(nets, backend, ...)`` returns callables that take a window batch ``(N, 1, X, Y, Z)``
float32 tensor and return logits ``(N, C, X, Y, Z)`` -- drop-in replacements for the VNets in
``sliding.ensemble_predictor``. Backends:

- ``torch``: the eager VNet (always available; the reference).
- ``openvino`` (``pip install organseg[fast]``): the VNet converted with ``openvino.convert_model`` and
  compiled for the CPU with ``INFERENCE_PRECISION_HINT=f32``. OpenVINO's default hint on a CPU with
  AVX-512 BF16 runs in bfloat16 and moved logits by up to 1.7 here (BENCHMARKS.md): f32 keeps them within
  about 5e-3 of eager and the masks equal (Dice >= 0.999 per organ).
- ``onnx`` (``pip install organseg[onnx]``): ``torch.onnx.export`` + an ONNX Runtime session.
- ``auto``: ``openvino`` when it is installed and the model is converted already or is the built-in
  model (converted on first use), else ``torch`` -- so a new model never pays a conversion unasked.

Converting a model takes tens of seconds on 2 cores, so the converted model is cached on disk under
``~/.cache/organseg/<backend>/`` (``$XDG_CACHE_HOME`` is honoured), keyed by a hash of the weights,
the window shape and the converter's version; later runs load it in well under a second. Cache
files are written to a temporary name and renamed, so an interrupted conversion leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from organseg.errors import ConfigError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino", "onnx")
_MODULES = {"openvino": ("openvino",), "onnx": ("onnx", "onnxruntime")}  # onnx: the exporter's


def installed(backend: str) -> bool:
    """Whether ``backend``'s runtime can be imported (``torch`` always can)."""
    return all(importlib.util.find_spec(module) is not None for module in _MODULES.get(backend, ()))


def resolve_backend(backend: str, device: str = "cpu") -> str:
    """The concrete backend for ``backend`` (``auto`` -> ``openvino`` if installed on a CPU run, else
    ``torch``); a named backend that is not installed is a ``ConfigError``."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "openvino" if device == "cpu" and installed("openvino") else "torch"
    if backend != "torch":
        if device != "cpu":
            raise ConfigError(f"backend: {backend} runs on the CPU only (device is {device})")
        if not installed(backend):
            extra = "organseg[fast]" if backend == "openvino" else "organseg[onnx]"
            raise ConfigError(f"backend: {backend} is not installed (pip install {extra})")
    return backend


def cache_dir() -> Path:
    """Folder for converted models: ``$XDG_CACHE_HOME/organseg`` or ``~/.cache/organseg``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "organseg"


def _weights_key(net: torch.nn.Module, window: Sequence[int], version: str) -> str:
    digest = hashlib.sha256(f"{tuple(window)}|{version}|{type(net).__name__}".encode())
    for name, value in net.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _replace_into(tmp: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)


def _openvino_model(net: torch.nn.Module, window: Sequence[int], threads: int) -> Callable:
    import openvino as ov

    key = _weights_key(net, window, ov.get_version())
    xml = cache_dir() / "openvino" / f"{key}.xml"
    core = ov.Core()
    if not xml.is_file():
        logger.warning("converting the model for OpenVINO (once; cached in %s)", xml.parent)
        # Tracing on a small window is several times faster than converting the module directly; the
        # VNet's graph does not depend on the window size (sizes divisible by 16 need no padding).
        example = torch.zeros(1, 1, 32, 32, 32)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the VNet's padding check
            traced = torch.jit.trace(net, example, check_trace=False)
        model = ov.convert_model(traced, example_input=example, input=[ov.PartialShape([-1, 1, *window])])
        xml.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=xml.parent) as tmp:
            ov.save_model(model, Path(tmp) / "model.xml", compress_to_fp16=False)
            _replace_into(Path(tmp) / "model.bin", xml.with_suffix(".bin"))
            _replace_into(Path(tmp) / "model.xml", xml)
    compiled = core.compile_model(
        core.read_model(xml),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": int(threads),
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = request.infer([np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)])
        return torch.from_numpy(np.array(out[0], copy=True))

    return forward


def _onnx_model(net: torch.nn.Module, window: Sequence[int], threads: int) -> Callable:
    import onnxruntime as ort

    key = _weights_key(net, window, f"{torch.__version__}|{ort.__version__}")
    path = cache_dir() / "onnx" / f"{key}.onnx"
    if not path.is_file():
        logger.warning("exporting the model to ONNX (once; cached in %s)", path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            torch.onnx.export(
                net,
                (torch.zeros(1, 1, *window),),
                str(Path(tmp) / "model.onnx"),
                dynamo=False,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
                opset_version=17,
            )
            _replace_into(Path(tmp) / "model.onnx", path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {"x": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
        return torch.from_numpy(out[0])

    return forward


def _cached(net: torch.nn.Module, name: str, window: Sequence[int]) -> bool:
    if name == "openvino":
        import openvino as ov

        return (cache_dir() / "openvino" / f"{_weights_key(net, window, ov.get_version())}.xml").is_file()
    return False


def wrap_networks(
    nets: Sequence[torch.nn.Module],
    backend: str,
    window: Sequence[int],
    threads: int,
    device: str = "cpu",
    *,
    convert: bool = False,
) -> tuple[list[Callable], str]:
    """``(callables, backend used)``: each net as a logits function on ``backend`` (see module doc).

    Args:
        nets: VNets in eval mode.
        backend: one of ``BACKENDS``.
        window: the sliding-window size (X, Y, Z) in voxels; converted models are built for it with a
            free batch dimension.
        threads: CPU threads for the converted runtimes.
        device: the torch device (non-CPU devices always run ``torch``).
        convert: under ``auto``, convert models that are not cached yet (the built-in model); otherwise
            ``auto`` uses a converted runtime only where every net's conversion is cached.
    """
    name = resolve_backend(backend, device)
    if backend == "auto" and name != "torch" and not convert:
        name = name if all(_cached(net, name, window) for net in nets) else "torch"
    if name == "torch":
        return list(nets), name
    make = _openvino_model if name == "openvino" else _onnx_model
    return [make(net, window, threads) for net in nets], name
