"""organseg: abdominal organ segmentation (liver, kidneys, spleen) in 3D CT, built on MONAI.

Everything the command line does is one function call here:

    >>> import organseg
    >>> from organseg.config import load_config
    >>> organseg.synthesize("data/phantoms", n=8, seed=0)
    >>> run = organseg.train(load_config("demo"), data_dir="data/phantoms", run_dir="runs/demo")
    >>> organseg.segment("ct.nii.gz", "mask.nii.gz")            # built-in model, or model=run
    >>> organseg.evaluate("mask.nii.gz", "ref.nii.gz", ref_map="totalsegmentator")
    >>> organseg.render("mask.nii.gz", "organs.mp4")

The verbs are loaded lazily (PEP 562 module ``__getattr__``): ``import organseg`` imports neither torch,
MONAI nor VTK, so ``organseg --help`` stays fast, and the first access to ``organseg.segment`` imports
``organseg.infer`` and returns the real function, with its real signature and docstring
(``help(organseg.segment)``). The modules behind the verbs have noun names (``rendering``, ``training``,
``pipeline``): a submodule named like a function here would replace that function on the package as soon
as it is imported (``organseg.render`` would turn into a module).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from organseg.version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time ``__getattr__`` loads these on first use
    from organseg.infer import segment
    from organseg.metrics import evaluate
    from organseg.phantom import synthesize
    from organseg.pipeline import demo
    from organseg.rendering import render
    from organseg.training import train

#: Public verb -> the module that defines it.
_API = {
    "synthesize": "organseg.phantom",
    "train": "organseg.training",
    "segment": "organseg.infer",
    "evaluate": "organseg.metrics",
    "render": "organseg.rendering",
    "demo": "organseg.pipeline",
}

__all__ = ["__version__", "demo", "evaluate", "render", "segment", "synthesize", "train"]


def __getattr__(name: str) -> object:
    """Import the module behind a public verb on first use and cache the function on the package."""
    if name not in _API:
        raise AttributeError(f"module 'organseg' has no attribute {name!r}")
    function = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = function
    return function


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
