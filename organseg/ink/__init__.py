"""Ink detection on papyrus surface volumes (Vesuvius Challenge layout): organseg's second task.

Modules, one concept each: ``config`` (InkConfig), ``reader`` (fragment folders, windowed TIFF
reads), ``synth`` (synthetic fragments), ``data`` (training tiles), ``model`` (InkNet),
``train`` (leave-one-fragment-out folds), ``predict`` (streamed tiled probabilities), ``infer``
(ensemble, threshold, outputs), ``metrics``/``evaluate`` (F0.5), ``rle`` (submissions),
``baseline`` (fixed-slice check), ``demo`` and ``commands`` (``organseg ink ...``).
Nothing is imported here, so ``import organseg.ink`` stays cheap.
"""
