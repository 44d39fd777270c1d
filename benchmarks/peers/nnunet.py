"""nnU-Net v2 as a peer: its own venv, the Dataset raw layout, a wall-clock trainer, its commands.

The venv (``ensure_venv``) is created under /tmp, never in the repository:
``python -m venv VENV``, then ``VENV/bin/pip install torch==2.13.0+cpu`` (from pip's configured sources, else
``--index-url https://download.pytorch.org/whl/cpu``), then ``pip install nnunetv2`` with torch held at that
CPU build by a constraint file, then ``pip uninstall torchvision``: PyPI's torchvision (pulled in by timm) is
a CUDA build that fails to load against the CPU torch ("operator torchvision::nms does not exist"), and
nnU-Net's default 3d_fullres path never imports it.

nnU-Net has no wall-clock option, so ``install_trainer`` writes ``nnUNetTrainer_WallClock`` (source below)
into the venv's ``nnunetv2/training/nnUNetTrainer/`` folder, where nnU-Net looks trainers up by name. It is
the default trainer (network, loss, augmentation, optimiser, 1e-2 SGD) with three changes: training stops
before the iteration that would end after the deadline; the poly learning-rate schedule runs over the
budget's wall clock instead of 1000 epochs (so the rate decays as it would at the end of a full run); and
epochs are short (``ORGANSEG_PEERS_ITERS`` iterations, 1 validation batch) so the deadline is checked often.
The fold's post-training validation is skipped (the benchmark scores the held-out phantoms itself). It writes
``wallclock.json`` (iterations, seconds per iteration, parameters, patch size) into the fold folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATASET_ID = 901
DATASET = f"Dataset{DATASET_ID:03d}_OrgansegPhantoms"
TRAINER = "nnUNetTrainer_WallClock"

TRAINER_SOURCE = '''"""Written by organseg benchmarks/bench_peers.py: the default nnU-Net trainer under a wall-clock budget."""
import json
import os
import time

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_WallClock(nnUNetTrainer):
    """Stops at ORGANSEG_PEERS_DEADLINE (Unix s); poly LR over the wall clock from ORGANSEG_PEERS_START."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_start = float(os.environ.get("ORGANSEG_PEERS_START", time.time()))
        self.deadline = float(os.environ.get("ORGANSEG_PEERS_DEADLINE", self.budget_start + 3600))
        self.num_iterations_per_epoch = int(os.environ.get("ORGANSEG_PEERS_ITERS", "5"))
        self.num_val_iterations_per_epoch = 1

    def _lr_step(self):
        span = max(1e-6, self.deadline - self.budget_start)
        fraction = min(max((time.time() - self.budget_start) / span, 0.0), 0.999)
        self.lr_scheduler.step(int(fraction * self.num_epochs))

    def run_training(self):
        self.on_train_start()
        times, first = [], time.time()
        for _ in range(self.current_epoch, self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                if times and time.time() + float(np.median(times)) > self.deadline:
                    break
                self._lr_step()
                t = time.time()
                outputs.append(self.train_step(next(self.dataloader_train)))
                times.append(time.time() - t)
            if outputs:
                self.on_train_epoch_end(outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val = [self.validation_step(next(self.dataloader_val))]
                    self.on_validation_epoch_end(val)
                self.on_epoch_end()
            if len(outputs) < self.num_iterations_per_epoch:
                break
        info = {
            "iterations": len(times),
            "epochs": self.current_epoch,
            "s_per_iteration": float(np.median(times)) if times else None,
            "train_loop_s": time.time() - first,
            "parameters": int(sum(p.numel() for p in self.network.parameters())),
            "patch_size": list(self.configuration_manager.patch_size),
            "batch_size": int(self.configuration_manager.batch_size),
        }
        with open(os.path.join(self.output_folder, "wallclock.json"), "w") as fh:
            json.dump(info, fh, indent=1)
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("fold validation skipped: bench_peers scores the held-out phantoms itself")
'''


def ensure_venv(venv: Path, log: Path) -> Path:
    """Create the nnU-Net venv if ``VENV/bin/nnUNetv2_train`` is missing (see the module docstring)."""
    bin_dir = venv / "bin"
    if (bin_dir / "nnUNetv2_train").exists():
        return bin_dir
    log.parent.mkdir(parents=True, exist_ok=True)
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q"]
    with log.open("a", encoding="utf-8") as fh:

        def sh(cmd: list[str], check: bool = True) -> int:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=check).returncode

        sh([sys.executable, "-m", "venv", str(venv)])
        if sh([*pip, "torch==2.13.0+cpu"], check=False):
            sh([*pip, "torch==2.13.0+cpu", "--index-url", "https://download.pytorch.org/whl/cpu"])
        constraint = venv / "torch-constraint.txt"
        constraint.write_text("torch==2.13.0+cpu\n", encoding="utf-8")
        sh([*pip, "nnunetv2", "-c", str(constraint)])
        sh([str(bin_dir / "python"), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=False)
    return bin_dir


def install_trainer(venv: Path) -> Path:
    """Write ``nnUNetTrainer_WallClock`` into the venv's nnU-Net trainer folder; return the file."""
    (folder,) = venv.glob("lib/python3*/site-packages/nnunetv2/training/nnUNetTrainer")
    path = folder / f"{TRAINER}.py"
    if not path.exists() or path.read_text(encoding="utf-8") != TRAINER_SOURCE:
        path.write_text(TRAINER_SOURCE, encoding="utf-8")
    return path


def nnunet_env(root: Path, training: bool = False) -> dict[str, str]:
    """nnU-Net's three folders (it reads them only from the environment) and CPU settings."""
    return {
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        # augmentation in the training process (0 workers; planning reads it as a thread count, so 2 there)
        "nnUNet_n_proc_DA": "0" if training else "2",
        "nnUNet_compile": "f",
    }


def write_raw_dataset(train_dir: Path, names: list[str], root: Path, organs: list[str]) -> Path:
    """nnU-Net's raw layout over organseg's MSD phantoms (symlinks; images get the ``_0000`` channel suffix)."""
    folder = root / "raw" / DATASET
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        links = {
            folder / "imagesTr" / f"{name}_0000.nii.gz": train_dir / "imagesTr" / f"{name}.nii.gz",
            folder / "labelsTr" / f"{name}.nii.gz": train_dir / "labelsTr" / f"{name}.nii.gz",
        }
        for link, target in links.items():
            link.unlink(missing_ok=True)
            link.symlink_to(target.resolve())
    labels = {"background": 0, **{organ: i + 1 for i, organ in enumerate(organs)}}
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": len(names),
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1), encoding="utf-8")
    return folder


def write_split(root: Path, split: dict[str, list[str]]) -> Path:
    """Fold 0 of nnU-Net = organseg's fold 0 (the same training and validation cases)."""
    path = root / "preprocessed" / DATASET / "splits_final.json"
    path.write_text(json.dumps([split], indent=1), encoding="utf-8")
    return path


def plan_cmd(bin_dir: Path) -> list[str]:
    return [str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres"] + [
        *("-npfp", "2", "-np", "2", "--verify_dataset_integrity"),
    ]


def train_cmd(bin_dir: Path) -> list[str]:
    return [
        str(bin_dir / "nnUNetv2_train"),
        str(DATASET_ID),
        "3d_fullres",
        "0",
        "-tr",
        TRAINER,
        "-device",
        "cpu",
    ]


def predict_cmd(bin_dir: Path, in_dir: Path, out_dir: Path, tta: bool) -> list[str]:
    cmd = [str(bin_dir / "nnUNetv2_predict"), "-i", str(in_dir), "-o", str(out_dir), "-d", str(DATASET_ID)]
    cmd += ["-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"]
    return cmd if tta else [*cmd, "--disable_tta"]


def fold_dir(root: Path) -> Path:
    return root / "results" / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
