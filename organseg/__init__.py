"""organseg: abdominal organ segmentation (liver, kidneys, spleen) in 3D CT, built on MONAI.

Everything the command line does is one function call here:

    >>> import organseg
    >>> organseg.synthesize("data/phantoms", n=8, seed=0)
    >>> run = organseg.train("demo", data_dir="data/phantoms", run_dir="runs/demo")
    >>> organseg.segment("ct.nii.gz", "mask.nii.gz")            # built-in model, or model=run
    >>> organseg.evaluate("mask.nii.gz", "ref.nii.gz", ref_map="totalsegmentator")
    >>> organseg.render("mask.nii.gz", "organs.mp4")

Heavy libraries (torch, MONAI, VTK) are imported only when a function needs them, so
``organseg --help`` stays fast. The modules behind these verbs have noun names (``rendering``,
``training``, ``pipeline``): a submodule named like a function here would replace that function on the
package as soon as it is imported (``organseg.render`` would turn into a module).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "demo", "evaluate", "render", "segment", "synthesize", "train"]


def synthesize(*args: Any, **kwargs: Any) -> Any:
    """Write an MSD-layout dataset of synthetic abdominal CT phantoms; see ``organseg.phantom.synthesize``."""
    from organseg.phantom import synthesize as _synthesize

    return _synthesize(*args, **kwargs)


def train(*args: Any, **kwargs: Any) -> Any:
    """Train the VNet on k-fold splits; see ``organseg.training.train``."""
    from organseg.training import train as _train

    return _train(*args, **kwargs)


def segment(*args: Any, **kwargs: Any) -> Any:
    """Segment a CT onto its own grid; see ``organseg.infer.segment``."""
    from organseg.infer import segment as _segment

    return _segment(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> Any:
    """Per-organ Dice, HD95, NSD and more; see ``organseg.metrics.evaluate``."""
    from organseg.metrics import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def render(*args: Any, **kwargs: Any) -> Any:
    """Render a label mask as a rotating MP4 or a PNG; see ``organseg.rendering.render``."""
    from organseg.rendering import render as _render

    return _render(*args, **kwargs)


def demo(*args: Any, **kwargs: Any) -> Any:
    """Synthesize, train, infer, evaluate and render end to end; see ``organseg.pipeline.demo``."""
    from organseg.pipeline import demo as _demo

    return _demo(*args, **kwargs)
