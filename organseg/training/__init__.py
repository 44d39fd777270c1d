"""Training: k-fold VNet training with checkpoints, resume and a run folder (see ``api.train``).

Modules: ``api`` (train, dry_run, the CLI command), ``loop`` (one fold: epochs, validation,
checkpoints, resume), ``control`` (Ctrl-C flag, LR schedule, precision, RNG state), ``data`` (cached preprocessing, patch datasets, phantom pool, splits),
``runfolder`` (every file a run writes, through one ``RunWriter``).
"""

from organseg.modelstore import is_run_dir
from organseg.training.api import dry_run, fold_indices, resolve_device, train
from organseg.training.control import InterruptFlag, TrainingInterrupted
from organseg.training.runfolder import RunWriter, check_run_dir

__all__ = [
    "InterruptFlag",
    "RunWriter",
    "TrainingInterrupted",
    "check_run_dir",
    "dry_run",
    "fold_indices",
    "is_run_dir",
    "resolve_device",
    "train",
]
