"""What a phantom voxel is made of (tissue) and which anatomical structure it belongs to.

Two label maps describe a phantom: ``tissue`` (how a voxel looks: HU class, drawn by ``appearance``)
and ``structure`` (which organ or part owns it: liver, rib_left_9, aorta, ...). A liver voxel that is
a portal-vein branch has tissue ``PORTAL_BLOOD`` but structure ``liver``, so the ground truth follows
anatomy while the image shows the vessel. Structure names follow TotalSegmentator's spelling, so any
``LabelMap`` that names them (``pancreas``, ``gallbladder``, ``aorta``, ...) gets them as labels.

Painting is resolved by structure priority: a structure only overwrites voxels owned by structures
of lower or equal priority (see ``canvas.Canvas``). Air (outside the body) and the body wall rank
high, so organs can never leave the abdominal cavity.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Appearance classes; ``appearance.draw_tissue_hu`` gives each a HU value per case."""

    AIR = 0
    TABLE_SHELL = 1
    TABLE_FOAM = 2
    SKIN = 3
    SUBCUT_FAT = 4
    VISCERAL_FAT = 5
    MUSCLE = 6
    BONE_CORTICAL = 7
    BONE_CANCELLOUS = 8
    CARTILAGE = 9
    DISC = 10
    CSF = 11
    LUNG = 12
    LUNG_VESSEL = 13
    MYOCARDIUM = 14
    CARDIAC_BLOOD = 15
    ARTERIAL_BLOOD = 16
    VENOUS_BLOOD = 17
    PORTAL_BLOOD = 18
    LIVER = 19
    LIVER_LESION = 20
    BILE = 21
    SPLEEN = 22
    KIDNEY_CORTEX = 23
    KIDNEY_MEDULLA = 24
    URINE = 25
    RENAL_SINUS_FAT = 26
    KIDNEY_CYST = 27
    PANCREAS = 28
    GI_WALL = 29
    STOMACH_CONTENT = 30
    BOWEL_CONTENT = 31
    GAS = 32
    STOOL = 33
    BLADDER_URINE = 34
    METAL = 35
    ORAL_CONTRAST = 36  # positive oral contrast in the bowel (``variants``: its HU is set per case)


N_TISSUES = len(Tissue)

#: Structures: (name, priority). Id = position in this list; 0 is air outside the body.
_STRUCTURES: list[tuple[str, int]] = [
    ("background", 255),
    ("table", 254),
    ("skin", 94),
    ("subcutaneous_fat", 93),
    ("abdominal_wall", 90),
    ("torso_fat", 10),
    ("small_bowel", 20),
    ("colon", 22),
    ("duodenum", 24),
    ("stomach", 26),
    ("pancreas", 30),
    ("urinary_bladder", 32),
    ("spleen", 40),
    ("portal_vein_and_splenic_vein", 41),
    ("ureter", 43),
    ("artery", 44),
    ("renal_vein", 44),
    ("liver", 45),
    ("gallbladder", 47),
    ("kidney_right", 48),
    ("kidney_left", 48),
    ("iliopsoas_right", 60),
    ("iliopsoas_left", 60),
    ("quadratus_lumborum_right", 60),
    ("quadratus_lumborum_left", 60),
    ("lung_right", 62),
    ("lung_left", 62),
    ("diaphragm", 64),
    ("pericardium", 65),
    ("heart", 66),
    ("inferior_vena_cava", 68),
    ("aorta", 70),
    ("esophagus", 70),
    ("autochthon_right", 92),
    ("autochthon_left", 92),
    ("spinal_cord", 96),
    ("costal_cartilages", 96),
    ("intervertebral_discs", 97),
    ("sternum", 97),
    ("sacrum", 97),
    ("hip_right", 97),
    ("hip_left", 97),
    ("implant", 99),
    # appended (ids of the structures above stay): the fat of Gerota's space around each kidney; it ranks
    # with the liver, so it separates kidney from liver, spleen and bowel, and yields to vessels and muscle
    ("perirenal_fat", 45),
]
VERTEBRAE: tuple[str, ...] = tuple(f"T{i}" for i in range(6, 13)) + tuple(f"L{i}" for i in range(1, 6))
RIB_NUMBERS: tuple[int, ...] = (6, 7, 8, 9, 10, 11, 12)
_STRUCTURES += [(f"vertebrae_{v}", 97) for v in VERTEBRAE]
_STRUCTURES += [(f"rib_{side}_{n}", 97) for side in ("right", "left") for n in RIB_NUMBERS]
# appended (ids above stay): the arms of the ``arms`` variant, painted only into air
_STRUCTURES += [("arm_right", 94), ("arm_left", 94), ("humerus_right", 97), ("humerus_left", 97)]

#: Every structure name a phantom can contain, in id order (``STRUCTURES[0] == "background"``).
STRUCTURES: tuple[str, ...] = tuple(name for name, _ in _STRUCTURES)
PRIORITY = np.array([p for _, p in _STRUCTURES], dtype=np.uint8)
_ID = {name: i for i, name in enumerate(STRUCTURES)}


def sid(name: str) -> int:
    """Structure id of ``name`` (a ``STRUCTURES`` entry)."""
    return _ID[name]


def side_name(base: str, side: float) -> str:
    """``side_name("kidney", +1) == "kidney_right"``: +x is the patient's right in RAS."""
    return f"{base}_{'right' if side > 0 else 'left'}"


def overwrite_table() -> np.ndarray:
    """``table[new, current]``: may structure ``new`` paint over a voxel owned by ``current``?"""
    new = PRIORITY[:, None].astype(np.int16)
    cur = PRIORITY[None, :].astype(np.int16)
    table = cur <= new
    np.fill_diagonal(table, False)  # a structure never repaints itself (keeps its inner tissues)
    return table
