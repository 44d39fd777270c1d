"""Score ink predictions against ``inklabels.png``: PNG masks, a folder of them, or a submission CSV.

Per fragment and pooled over all pixels of all fragments (the pooled score weighs big fragments more,
like one F0.5 over the concatenated images).
"""

from __future__ import annotations

from pathlib import Path

from organseg.errors import InputError
from organseg.ink.metrics import confusion, scores_from_counts
from organseg.ink.reader import find_fragments, open_fragment, read_png_binary
from organseg.ink.rle import decode_ink, read_submission


def evaluate_ink(pred: str | Path, labels: str | Path, beta: float = 0.5) -> dict:
    """``{"fragments": {id: scores}, "pooled": scores}``; every fragment in ``labels`` must be predicted.

    Args:
        pred: ``<id>.png`` (non-zero = ink), a folder of ``<id>.png``, or an ``Id,Predicted`` CSV.
        labels: a labelled fragment folder or a folder of them (``<id>/inklabels.png``).
    """
    pred = Path(pred)
    fragments = find_fragments(labels)
    rles = read_submission(pred) if pred.suffix.lower() == ".csv" else None
    if rles is not None:
        unknown = sorted(set(rles) - {p.name for p in fragments})
        if unknown:
            raise InputError(f"{pred}: predictions for fragments not in {labels}: {', '.join(unknown[:5])}")
    per, totals = {}, [0, 0, 0]
    for p in fragments:
        with open_fragment(p, require_labels=True) as frag:
            shape = (frag.height, frag.width)
            ref = frag.read_labels()
        if rles is not None:
            if p.name not in rles:
                raise InputError(f"{pred}: no prediction for fragment {p.name!r}")
            mask = decode_ink(rles[p.name], shape, f"{pred} ({p.name})")
        else:
            png = pred / f"{p.name}.png" if pred.is_dir() else pred
            if not png.is_file():
                raise InputError(f"{png}: prediction not found")
            mask = read_png_binary(png, shape)
        counts = confusion(mask, ref)
        totals = [a + b for a, b in zip(totals, counts)]
        per[p.name] = scores_from_counts(*counts, beta=beta)
    return {"beta": beta, "fragments": per, "pooled": scores_from_counts(*totals, beta=beta)}
