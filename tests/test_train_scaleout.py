"""Training for bigger machines: parallel phantom pool, starting weights, half exports, wild phase."""

from __future__ import annotations

from pathlib import Path

import conftest
import numpy as np
import pytest
import torch

from organseg.checkpoint import build_model, load_safetensors_model, save_safetensors_model
from organseg.config import config_from_dict, config_to_dict
from organseg.errors import ConfigError, ModelError
from organseg.training import data as D
from organseg.training import train
from organseg.training.loop import init_weights


def tiny_config(**synthetic):
    settings = {
        **conftest.TINY_TRAINING,
        "train.samples_per_volume": 1,
        "train.epochs": 1,
        "train.steps_per_epoch": 2,
    }
    synthetic = (
        dict(enabled=True, pool_size=3, refresh_per_epoch=2, cases_per_epoch=2, val_cases=1, seed=40)
        | synthetic
    )
    return conftest.tiny_config(
        settings | {f"train.synthetic.{key}": value for key, value in synthetic.items()}
    )


def fake_phantom(seed: int, cfg) -> dict:
    """A small labelled volume per seed (module level: worker processes import it by name)."""
    ct, label = conftest.tiny_phantom(seed, (36, 32, 26))
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    return {"image": ct, "label": label, "affine": affine}


@pytest.mark.slow  # worker processes synthesize full phantoms: ~35 s on 2 shared cores
def test_pool_workers_give_the_same_phantoms_as_in_process():
    local, parallel = D.PhantomPool(tiny_config()), D.PhantomPool(tiny_config(workers=2))
    local.generate = parallel.generate = fake_phantom
    try:
        for epoch in (1, 2):
            local.refresh(epoch)
            parallel.refresh(epoch)
            for i in range(len(local)):
                assert local[i]["name"] == parallel[i]["name"]
                assert torch.equal(torch.as_tensor(local[i]["image"]), torch.as_tensor(parallel[i]["image"]))
                assert torch.equal(torch.as_tensor(local[i]["label"]), torch.as_tensor(parallel[i]["label"]))
        # the phantoms the next epoch needs are already being made
        held = {seed for seed, _ in parallel.slots.values()}
        assert set(parallel._pending) == set(parallel.seeds_at(3)) - held != set()
    finally:
        parallel.close()
    assert parallel._executor is None and not parallel._pending


def test_pool_without_workers_starts_no_processes():
    pool = D.PhantomPool(tiny_config(), generate=fake_phantom)
    pool.refresh(1)
    assert pool._executor is None and not pool._pending


def write_model(path: Path, cfg, seed: int, half: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_model(cfg)
    save_safetensors_model(path, net, cfg, half=half)
    return net


def test_init_weights_start_training_from_a_model(tmp_path):
    cfg = tiny_config()
    src = write_model(tmp_path / "start.safetensors", cfg, seed=3)
    path, state = init_weights(cfg, str(tmp_path / "start.safetensors"))
    assert path == tmp_path / "start.safetensors"
    for k, v in src.state_dict().items():
        assert torch.equal(state[k], v), k
    # a fresh model with another seed differs, so the comparison above is not trivial
    torch.manual_seed(4)
    other = build_model(cfg).state_dict()
    assert any(not torch.equal(other[k], v) for k, v in src.state_dict().items())


def test_unfit_init_weights_are_refused_before_the_run_folder_is_made(tmp_path):
    small = tiny_config()
    d = config_to_dict(small)
    d["model"].update(filters=[6, 12], bottleneck=12)
    write_model(tmp_path / "wide.safetensors", config_from_dict(d, "wide"), seed=0)
    d = config_to_dict(small)
    d["train"]["init_weights"] = str(tmp_path / "wide.safetensors")
    cfg = config_from_dict(d, "tiny")
    with pytest.raises(ModelError, match="wide.safetensors: train.init_weights: weights do not fit"):
        train(cfg, None, tmp_path / "run", progress=False, num_threads=1, phantom_generator=fake_phantom)
    assert not (tmp_path / "run").exists()
    d["train"]["init_weights"] = str(tmp_path / "missing.safetensors")
    with pytest.raises(ModelError, match="missing.safetensors: model not found"):
        train(config_from_dict(d, "tiny"), None, tmp_path / "run", progress=False, num_threads=1)


def test_half_export_is_half_the_size_and_loads_as_float32(tmp_path):
    cfg = tiny_config()
    d = config_to_dict(cfg)
    d["model"].update(filters=[16, 32], bottleneck=32)  # enough weights for the size to be the weights
    cfg = config_from_dict(d, "wider")
    net = write_model(tmp_path / "full.safetensors", cfg, seed=1)
    write_model(tmp_path / "half.safetensors", cfg, seed=1, half=True)
    full = (tmp_path / "full.safetensors").stat().st_size
    half = (tmp_path / "half.safetensors").stat().st_size
    assert 0.45 < half / full < 0.6
    loaded, _, _ = load_safetensors_model(tmp_path / "half.safetensors")
    for k, v in loaded.state_dict().items():
        assert v.dtype == net.state_dict()[k].dtype
        assert torch.allclose(v, net.state_dict()[k], rtol=1e-3, atol=1e-4), k
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), net.eval()(x), atol=1e-2)


def test_wild_fraction_picks_the_wild_phase_for_that_share_of_seeds(monkeypatch):
    from organseg import phantom

    phases = []

    def capture(seed, *, spacing_mm=None, labels=None, perirenal_fat=False, phase="random"):
        phases.append(phase)
        raise StopIteration  # the phase is all this test needs

    monkeypatch.setattr(phantom, "generate_case", capture)
    for fraction in (0.0, 0.3):
        phases.clear()
        cfg = tiny_config(wild_fraction=fraction)
        for seed in range(400):
            with pytest.raises(StopIteration):
                D.generate_phantom(seed, cfg)
        share = phases.count("wild") / len(phases)
        assert set(phases) <= {"wild", "random"}
        assert (share == 0.0) if fraction == 0 else 0.25 < share < 0.35
    again = []
    def capture_again(seed, *, spacing_mm=None, labels=None, perirenal_fat=False, phase="random"):
        again.append(phase)
        raise ZeroDivisionError

    monkeypatch.setattr(phantom, "generate_case", capture_again)
    for seed in range(20):
        with pytest.raises(ZeroDivisionError):
            D.generate_phantom(seed, tiny_config(wild_fraction=0.3))
    assert again == phases[:20]  # chosen from the seed alone


@pytest.mark.parametrize(
    "key,value", [("workers", -1), ("wild_fraction", 1.5), ("wild_fraction", -0.1)]
)
def test_bad_synthetic_settings_name_the_key(key, value):
    d = config_to_dict(tiny_config())
    d["train"]["synthetic"][key] = value
    with pytest.raises(ConfigError, match=f"train.synthetic.{key}"):
        config_from_dict(d, "tiny")
