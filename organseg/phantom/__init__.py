"""Synthetic abdominal CT phantoms: random, anatomically plausible abdomens with exact labels.

organseg's built-in model is trained only on these (domain randomization, as SynthSeg does for
brain MRI), so the generator aims for variety over fidelity to any one scan: body habitus from thin
to obese, skeleton, diaphragm and lung bases, liver, spleen, kidneys (cortex, medulla, sinus),
gallbladder, pancreas, stomach, bowel, colon, vessels, muscles and fat; then contrast phase, texture,
partial volume, noise, slice thickness and scanner artefacts.

Coordinates: anatomy lives in a patient frame in mm along RAS axes (+x the patient's **right**,
+y anterior, +z superior; nibabel's RAS+), origin at the centre of the L1 vertebral body. Output
``Volume`` affines map voxel indices to RAS+ world mm whatever the array orientation.

Pipeline (each step usable alone)::

    anatomy = sample_anatomy(rng)                      # resolution-free patient (mm)
    tissue, structure = rasterize(anatomy, grid)       # uint8 maps on a patient-frame Grid
    hu, info = render(tissue, spacing_mm, rng, phase)  # CT appearance; re-draw at will

Entry points: ``generate_case`` (image + label volumes), ``generate_phantom`` (plus tissue and
structure maps and what was drawn), ``synthesize`` (an MSD-layout dataset on disk) and
``PhantomStream`` (a torch ``IterableDataset`` for training on the fly; imported lazily because it
needs torch).

Example:
    >>> image, label = generate_case(0, spacing_mm=3.0, fov="abdomen", orientation="LPS")
    >>> image.orientation
    'LPS'
"""

from __future__ import annotations

from organseg.phantom.anatomy import FOVS, Anatomy, rasterize, sample_anatomy
from organseg.phantom.appearance import PHASE_CHOICES, PHASES, render
from organseg.phantom.dataset import Phantom, case_rng, generate_case, generate_phantom, label_lut, synthesize
from organseg.phantom.fields import Grid
from organseg.phantom.tissues import STRUCTURES, Tissue

__all__ = [
    "FOVS",
    "PHASES",
    "PHASE_CHOICES",
    "STRUCTURES",
    "Anatomy",
    "Grid",
    "Phantom",
    "PhantomStream",
    "Tissue",
    "case_rng",
    "generate_case",
    "generate_phantom",
    "label_lut",
    "rasterize",
    "render",
    "sample_anatomy",
    "synthesize",
]


def __getattr__(name: str):
    if name == "PhantomStream":  # torch is heavy: import it only when the stream is used
        from organseg.phantom.stream import PhantomStream

        return PhantomStream
    raise AttributeError(f"module 'organseg.phantom' has no attribute {name!r}")
