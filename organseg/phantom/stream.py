"""An endless stream of phantoms for training on the fly (a torch ``IterableDataset``).

Seeding: item ``j`` of anatomy ``a`` on rank ``r`` comes from ``default_rng([seed, r, a, j])`` (a
``SeedSequence`` over the tuple: no two ranks, anatomies or appearances collide). Anatomies are dealt
to DataLoader workers round-robin (worker ``w`` of ``W`` takes ``a = w, w + W, ...``), so the set of
cases does not depend on the number of workers. Each anatomy is rasterized once and shown with
``appearances_per_anatomy`` different contrasts/noise draws, which is much cheaper than new anatomy.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.utils.data

from organseg.config import LabelMap
from organseg.phantom.dataset import build_scene, check_options, draw_variants, finish_case
from organseg.phantom.variants import Variants


class PhantomStream(torch.utils.data.IterableDataset):
    """Yields ``{"image": float32 (1, X, Y, Z) HU, "label": uint8 (1, X, Y, Z), "affine": 4x4, "case": str}``.

    Args:
        spacing_mm: voxel size (x, y, z) mm of the generated arrays (training spacing), e.g. 3.0.
        shape: fixed array shape (x, y, z) centred on the organs (batchable); ``None``: the field
            of view cropped to the body (shapes vary).
        seed: base seed; ``rank``: this process's distributed rank (0 when not distributed).
        length: anatomies per pass over the stream (``None``: endless); items = length x appearances.
        appearances_per_anatomy: appearance re-draws of each anatomy.
        fov, orientation, phase, labels, artefacts, perirenal_fat, variants: as in ``generate_case``
            (a variant is drawn per anatomy; thin slabs need ``shape=None``).

    Example:
        >>> stream = PhantomStream(spacing_mm=3.0, shape=(96, 96, 96), seed=1, length=8)
        >>> loader = torch.utils.data.DataLoader(stream, batch_size=2, num_workers=2)
    """

    def __init__(
        self,
        spacing_mm=3.0,
        shape=None,
        *,
        seed: int = 0,
        rank: int = 0,
        length: int | None = None,
        appearances_per_anatomy: int = 1,
        fov: str | None = None,
        orientation: str = "RAS",
        phase: str = "random",
        labels: LabelMap = LabelMap(),
        artefacts: bool = True,
        perirenal_fat: bool = False,
        variants: Variants | None = None,
    ):
        super().__init__()
        check_options(phase, orientation, fov)
        if appearances_per_anatomy < 1:
            raise ValueError(f"appearances_per_anatomy must be >= 1, got {appearances_per_anatomy}")
        self.spacing_mm = spacing_mm
        self.shape = None if shape is None else tuple(int(s) for s in shape)
        self.seed, self.rank, self.length = int(seed), int(rank), length
        self.appearances = int(appearances_per_anatomy)
        self.perirenal_fat = bool(perirenal_fat)
        self.variants = variants
        self.fov, self.orientation, self.phase, self.labels, self.artefacts = (
            fov,
            orientation,
            phase,
            labels,
            artefacts,
        )

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        a = worker
        while self.length is None or a < self.length:
            yield from self.anatomy_items(a)
            a += workers

    def anatomy_items(self, a: int) -> Iterator[dict]:
        """The ``appearances_per_anatomy`` items of anatomy ``a`` (deterministic)."""
        anat_rng, geom_rng, var_rng = np.random.default_rng([self.seed, self.rank, a, 0]).spawn(3)
        scene = build_scene(
            anat_rng, geom_rng, self.spacing_mm, self.shape, self.fov,
            max_voxels=10**9, perirenal_fat=self.perirenal_fat, variant=draw_variants(var_rng, self.variants),
        )  # fmt: skip
        for j in range(self.appearances):
            app_rng, orient_rng = np.random.default_rng([self.seed, self.rank, a, j + 1]).spawn(2)
            p = finish_case(
                scene, app_rng, orient_rng, self.orientation, self.phase, self.labels, self.artefacts
            )
            yield {
                "image": p.image.array[None].astype(np.float32),
                "label": p.label.array[None],
                "affine": p.image.affine,
                "case": f"phantom-{self.seed}-{self.rank}-{a}-{j}",
            }
