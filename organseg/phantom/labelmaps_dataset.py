"""``organseg synth --from-labels``: an MSD dataset of synthetic CTs rendered from label maps.

The writer mirrors ``phantom.synthesize`` (same layout, same per-case seeding, RAS/LPS alternation), so
``organseg train --data`` reads both alike. Rendering is ``labelmaps.render_label_map``.

Label maps from the TotalSegmentator dataset v2.0.1 (Wasserthal et al., Radiology: AI 2023, Zenodo
10047292) are CC BY 4.0: a dataset or model made from them must cite it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from organseg import io
from organseg.config import LabelMap
from organseg.errors import ConfigError, OutputError
from organseg.phantom.dataset import case_rng, dataset_json
from organseg.phantom.labelmaps import render_label_map
from organseg.phantom.labelmaps_io import load_label_map


def synthesize_from_labels(
    sources: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    classes: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    spacing_mm=3.0,
    fov: str | None = None,
    phase: str = "random",
    labels: LabelMap = LabelMap(),
) -> list[Path]:
    """Write ``n`` label-map cases as an MSD dataset (the layout of ``phantom.synthesize``); return the images.

    Layout: ``dataset.json``, ``imagesTr/labelmap_000.nii.gz``, ``labelsTr/labelmap_000.nii.gz``, ... and
    ``labelmaps.json`` (what each case drew). Case ``i`` renders map ``i % len(sources)`` from
    ``case_rng(seed, i)``, so it does not depend on ``n``; even cases are stored RAS, odd ones LPS.
    Every map is read and validated before anything is written; a non-empty ``out_dir`` is refused
    unless ``overwrite``.
    """
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    out = Path(out_dir)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"{out}: number of cases must be a positive integer, got {n!r}")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out}: folder is not empty (pass --overwrite to write into it)")
    maps = [load_label_map(p, classes, labels.organs) for p in paths]
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    names = [f"labelmap_{i:03d}" for i in range(n)]
    images, records = [], []
    for i, name in enumerate(tqdm(names, desc="label-map cases", unit="case", disable=not progress)):
        image, label, info = render_label_map(
            maps[i % len(maps)], case_rng(seed, i), spacing_mm=spacing_mm, labels=labels, fov=fov,
            phase=phase, orientation="RAS" if i % 2 == 0 else "LPS",
        )  # fmt: skip
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm")
        header["descrip"] = f"organseg label-map case seed={seed} case={i}".encode()[:79]
        for sub, vol in (("imagesTr", image), ("labelsTr", label)):
            path = out / sub / f"{name}.nii.gz"
            io.write_nifti(
                vol.array, io.Volume(vol.array, vol.affine, str(path), header), path, overwrite=overwrite
            )
        images.append(out / "imagesTr" / f"{name}.nii.gz")
        records.append({"case": name, "seed": seed, "index": i, **info})
    meta = dataset_json(names, labels, seed)
    meta.update(
        name="organseg-labelmap-synth",
        description=f"Synthetic CT rendered from label maps {', '.join(str(p) for p in paths)} (organseg), seed {seed}",
        reference="organseg.phantom.labelmaps; cite the label maps' source (TotalSegmentator dataset: CC BY 4.0)",
        licence="as the source label maps",
    )
    io.atomic_write_json(out / "dataset.json", meta, overwrite=True)
    io.atomic_write_json(out / "labelmaps.json", records, overwrite=True)
    return images


__all__ = ["synthesize_from_labels"]
