"""Checkpoints and safetensors models: exact round trips, and untrusted files refused without running them."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from organseg.checkpoint import (
    build_model,
    export_safetensors,
    load_checkpoint,
    load_safetensors_model,
    model_from_checkpoint,
    save_checkpoint,
    save_safetensors_model,
)
from organseg.config import config_to_dict, replace_path
from organseg.errors import ModelError


@pytest.fixture
def tiny_cfg():
    return tiny_config()


def _perturbed(cfg) -> torch.nn.Module:
    torch.manual_seed(3)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


def test_checkpoint_round_trip_is_exact(tmp_path: Path, tiny_cfg) -> None:
    model = _perturbed(tiny_cfg)
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": config_to_dict(tiny_cfg), "epoch": 7})
    loaded, cfg = model_from_checkpoint(load_checkpoint(path), str(path))
    assert cfg == tiny_cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "temp file left behind"


def test_safetensors_round_trip_and_export(tmp_path: Path, tiny_cfg) -> None:
    model = _perturbed(tiny_cfg)
    save_safetensors_model(tmp_path / "m.safetensors", model, tiny_cfg, {"note": "x"})
    loaded, cfg, extra = load_safetensors_model(tmp_path / "m.safetensors")
    assert cfg == tiny_cfg and extra == {"note": "x"}
    x = torch.randn(1, 1, 16, 16, 16)
    model.eval()
    assert torch.equal(model(x), loaded(x))

    save_checkpoint(
        tmp_path / "c.pt", {"model": model.state_dict(), "config": config_to_dict(tiny_cfg), "epoch": 5}
    )
    export_safetensors(tmp_path / "c.pt", tmp_path / "e.safetensors")
    exported, cfg2, extra2 = load_safetensors_model(tmp_path / "e.safetensors")
    assert cfg2 == tiny_cfg and extra2["source_epoch"] == 5
    assert torch.equal(exported(x), loaded(x))


class _Evil:
    """Unpickling this would create a marker file: proof that code ran."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "evil.pt"
    torch.save({"model": evil, "config": {}}, path)
    with pytest.raises(ModelError, match=r"evil\.pt: refused to load"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(evil))
    with pytest.raises(ModelError, match=r"raw\.pt"):
        load_checkpoint(raw)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all", b"PK\x03\x04 truncated zip"],
    ids=["empty", "text", "truncated"],
)
def test_corrupt_checkpoints_are_model_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=r"bad\.pt"):
        load_checkpoint(path)


def test_foreign_files_are_refused(tmp_path: Path, tiny_cfg) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(ModelError, match="not an organseg checkpoint"):
        load_checkpoint(plain)
    # weights of another architecture under a valid config
    other = replace_path(tiny_cfg, "model.filters", [4, 8, 16])
    mismatched = tmp_path / "mismatch.pt"
    save_checkpoint(
        mismatched, {"model": build_model(other).state_dict(), "config": config_to_dict(tiny_cfg)}
    )
    with pytest.raises(ModelError, match="weights do not fit"):
        model_from_checkpoint(load_checkpoint(mismatched), str(mismatched))
    # a safetensors file that is not an organseg model
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ModelError, match="not an organseg model"):
        load_safetensors_model(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="junk.safetensors"):
        load_safetensors_model(tmp_path / "junk.safetensors")
