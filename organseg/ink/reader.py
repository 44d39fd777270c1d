"""Read papyrus fragments in the Vesuvius Challenge layout, one slice window and row band at a time.

A fragment is a folder::

    <id>/surface_volume/00.tif ... 64.tif   65 greyscale 16-bit slices (any compression), H x W each
    <id>/mask.png                           where the papyrus is (any non-zero pixel), H x W
    <id>/inklabels.png                      binary ink (training fragments only), H x W
    <id>/ir.png                             infrared photograph (optional), H x W

Arrays are in (slice, row, column) order: slice 00 is the first TIFF, rows run down the image and
columns across it, exactly as the PNGs are stored. Nothing here reads a whole volume: ``read_rows``
returns only the slices and rows asked for, by reading their byte range from uncompressed TIFFs and
by decoding only the strips or tiles that cross the rows for compressed ones, so a 15000 x 9500
fragment is handled in bands of a few hundred MB. Every problem with the input becomes one
``InputError`` line that names the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from organseg.errors import InputError

N_SLICES = 65
SLICE_NAME = re.compile(r"^(\d+)\.tiff?$", re.IGNORECASE)


def _tifffile():
    import tifffile

    return tifffile


class SliceFile:
    """One 16-bit TIFF slice, checked on open, read by row bands.

    Args:
        path: the ``NN.tif`` file. It must hold one 2D greyscale uint16 image.
    """

    def __init__(self, path: Path) -> None:
        tifffile = _tifffile()
        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
            page = self._tif.pages[0]
            shape, dtype = tuple(page.shape), np.dtype(page.dtype)
            size = path.stat().st_size
        except Exception as err:  # tifffile raises many types for a damaged file
            raise InputError(f"{path}: not a readable TIFF ({_first_line(err)})") from None
        if len(shape) != 2:
            self.close()
            raise InputError(f"{path}: expected one greyscale 2D image, found shape {shape}")
        if dtype != np.uint16:
            self.close()
            bits = dtype.itemsize * 8
            raise InputError(
                f"{path}: expected a 16-bit slice, found {bits}-bit {dtype} (8-bit volumes are not supported)"
            )
        ends = np.asarray(page.dataoffsets, dtype=np.int64) + np.asarray(page.databytecounts, dtype=np.int64)
        if len(ends) == 0 or ends.max() > size:
            self.close()
            raise InputError(f"{path}: TIFF is truncated (image data runs past the end of the file)")
        self.shape = shape
        self._page = page
        # Raw (uncompressed, contiguous) slices are read by byte ranges, not memory-mapped: mapped
        # pages count in the resident set until unmapped, so a streamed pass over a big fragment
        # would look (and, under pressure, behave) like holding the whole window.
        self._raw_offset: int | None = None
        if page.compression == 1 and page.is_contiguous and not page.is_tiled:
            self._raw_offset = int(page.dataoffsets[0])
            self._raw_dtype = np.dtype(("<" if self._tif.byteorder == "<" else ">") + "u2")

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` (all columns) as uint16, decoding only the strips/tiles that cross them."""
        page, h, w = self._page, *self.shape
        if self._raw_offset is not None:
            fh = self._tif.filehandle
            fh.seek(self._raw_offset + r0 * w * 2)
            data = fh.read((r1 - r0) * w * 2)
            if len(data) != (r1 - r0) * w * 2:
                raise InputError(f"{self.path}: TIFF is truncated (rows {r0}-{r1} missing)")
            return np.frombuffer(data, dtype=self._raw_dtype).reshape(r1 - r0, w).astype(np.uint16)
        out = np.zeros((r1 - r0, w), dtype=np.uint16)
        if page.is_tiled:
            th, tw = page.tilelength, page.tilewidth
            per_row = -(-w // tw)
            wanted = [
                i
                for i in range(len(page.dataoffsets))
                if (i // per_row) * th < r1 and (i // per_row + 1) * th > r0
            ]
        else:
            rps = min(page.rowsperstrip or h, h)
            wanted = list(range(r0 // rps, min(len(page.dataoffsets), -(-r1 // rps))))
        fh = self._tif.filehandle
        try:
            for i in wanted:
                fh.seek(page.dataoffsets[i])
                data = fh.read(page.databytecounts[i])
                seg, idx, _ = page.decode(data, i)
                seg = np.asarray(seg).reshape(seg.shape[-3], seg.shape[-2])
                y, x = idx[-3], idx[-2]
                sh, sw = min(seg.shape[0], h - y), min(seg.shape[1], w - x)
                a, b = max(r0, y), min(r1, y + sh)
                if a < b:
                    out[a - r0 : b - r0, x : x + sw] = seg[a - y : b - y, :sw]
        except Exception as err:
            raise InputError(f"{self.path}: cannot decode the TIFF data ({_first_line(err)})") from None
        return out

    def close(self) -> None:
        self._tif.close()


@dataclass
class Fragment:
    """An opened fragment folder: validated file list and size; pixel data is read on demand.

    ``height``/``width`` are the slices' rows and columns; ``has_labels`` says whether
    ``inklabels.png`` is there (training) or not (test).
    """

    path: Path
    slice_paths: list[Path]
    height: int
    width: int
    has_labels: bool
    has_ir: bool
    _slices: dict[int, SliceFile] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def _slice(self, z: int) -> SliceFile:
        if z not in self._slices:
            sf = SliceFile(self.slice_paths[z])
            if sf.shape != (self.height, self.width):
                sf.close()
                raise InputError(
                    f"{self.slice_paths[z]}: slice is {sf.shape[0]}x{sf.shape[1]} (rows x columns), "
                    f"but {self.slice_paths[0].name} is {self.height}x{self.width}"
                )
            self._slices[z] = sf
        return self._slices[z]

    def read_rows(self, z0: int, z1: int, r0: int, r1: int) -> np.ndarray:
        """Slices ``z0:z1``, rows ``r0:r1``, all columns: uint16 ``(z1-z0, r1-r0, width)``."""
        r0, r1 = max(0, r0), min(self.height, r1)
        out = np.empty((z1 - z0, r1 - r0, self.width), dtype=np.uint16)
        for k, z in enumerate(range(z0, z1)):
            out[k] = self._slice(z).read_rows(r0, r1)
        return out

    def read_window(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0:z1`` whole, uint16 ``(z, H, W)``: for training on fragments that fit in memory."""
        return self.read_rows(z0, z1, 0, self.height)

    def read_mask(self) -> np.ndarray:
        """``mask.png`` as bool ``(H, W)``; an empty mask is an ``InputError``."""
        mask = read_png_binary(self.path / "mask.png", (self.height, self.width))
        if not mask.any():
            raise InputError(f"{self.path / 'mask.png'}: the mask is empty (no papyrus to read)")
        return mask

    def read_labels(self) -> np.ndarray:
        """``inklabels.png`` as bool ``(H, W)``."""
        if not self.has_labels:
            raise InputError(
                f"{self.path / 'inklabels.png'}: not found (a training fragment needs ink labels)"
            )
        return read_png_binary(self.path / "inklabels.png", (self.height, self.width))

    def read_ir(self) -> np.ndarray | None:
        """``ir.png`` as uint8 greyscale ``(H, W)``, or ``None`` when the fragment has none."""
        if not self.has_ir:
            return None
        return read_png(self.path / "ir.png", (self.height, self.width))

    def check_slices(self) -> None:
        """Open every slice once: sizes, bit depth and TIFF integrity, before any output is written."""
        for z in range(N_SLICES):
            self._slice(z)

    def close(self) -> None:
        for sf in self._slices.values():
            sf.close()
        self._slices.clear()

    def __enter__(self) -> Fragment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_fragment(path: str | Path, require_labels: bool = False) -> Fragment:
    """Open and validate a fragment folder (file list, slice headers, mask size); reads no pixels.

    Raises ``InputError`` naming the file for: a missing folder, ``surface_volume`` or ``mask.png``;
    missing or extra slices; slices of different sizes or not 16-bit; corrupt TIFFs; a mask, label
    or IR image of another size; and (``require_labels``) a missing ``inklabels.png``.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: fragment folder not found")
    vol = path / "surface_volume"
    if not vol.is_dir():
        raise InputError(f"{vol}: folder not found (expected surface_volume/00.tif ... 64.tif)")
    found: dict[int, Path] = {}
    for p in sorted(vol.iterdir()):
        m = SLICE_NAME.match(p.name)
        if not m:
            continue
        z = int(m.group(1))
        if z >= N_SLICES:
            raise InputError(f"{p}: extra slice (a fragment has {N_SLICES} slices, 00 to {N_SLICES - 1})")
        if z in found:
            raise InputError(f"{p}: slice {z} given twice (also {found[z].name})")
        found[z] = p
    missing = [z for z in range(N_SLICES) if z not in found]
    if missing:
        listed = ", ".join(f"{z:02d}.tif" for z in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"{vol}: {len(missing)} slice(s) missing ({listed})")
    first = SliceFile(found[0])
    height, width = first.shape
    frag = Fragment(
        path=path,
        slice_paths=[found[z] for z in range(N_SLICES)],
        height=height,
        width=width,
        has_labels=(path / "inklabels.png").is_file(),
        has_ir=(path / "ir.png").is_file(),
    )
    frag._slices[0] = first
    try:
        frag.check_slices()
        if not (path / "mask.png").is_file():
            raise InputError(f"{path / 'mask.png'}: not found (every fragment needs a mask)")
        png_size(path / "mask.png", (height, width))
        if require_labels and not frag.has_labels:
            raise InputError(f"{path / 'inklabels.png'}: not found (a training fragment needs ink labels)")
        if frag.has_labels:
            png_size(path / "inklabels.png", (height, width))
        if frag.has_ir:
            png_size(path / "ir.png", (height, width))
    except BaseException:
        frag.close()
        raise
    return frag


def _open_png(path: Path):
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # real fragments pass PIL's 89-Mpixel decompression-bomb guard
    try:
        img = Image.open(path)
        img.load()
    except Exception as err:
        raise InputError(f"{path}: not a readable image ({_first_line(err)})") from None
    return img


def png_size(path: Path, expected: tuple[int, int]) -> None:
    """Check an image's size against the slices' ``(rows, columns)`` from its header only."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception as err:
        raise InputError(f"{path}: not a readable image ({_first_line(err)})") from None
    if (h, w) != tuple(expected):
        raise InputError(
            f"{path}: image is {h}x{w} (rows x columns) but the slices are {expected[0]}x{expected[1]}"
        )


def read_png(path: Path, expected: tuple[int, int] | None = None) -> np.ndarray:
    """A PNG in any mode (L, RGB, RGBA, P, 1, I;16) as uint8 greyscale ``(rows, columns)``."""
    img = _open_png(path)
    if img.mode in ("I;16", "I;16B", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        out = np.clip(arr / top * 255, 0, 255).astype(np.uint8)
    else:
        out = np.asarray(img.convert("L"), dtype=np.uint8)
    if expected is not None and out.shape != tuple(expected):
        raise InputError(
            f"{path}: image is {out.shape[0]}x{out.shape[1]} (rows x columns) "
            f"but the slices are {expected[0]}x{expected[1]}"
        )
    return out


def read_png_binary(path: Path, expected: tuple[int, int] | None = None) -> np.ndarray:
    """A mask PNG as bool: any non-zero pixel (in any channel) is True."""
    img = _open_png(path)
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    out = arr > 0
    if expected is not None and out.shape != tuple(expected):
        raise InputError(
            f"{path}: image is {out.shape[0]}x{out.shape[1]} (rows x columns) "
            f"but the slices are {expected[0]}x{expected[1]}"
        )
    return out


def find_fragments(path: str | Path) -> list[Path]:
    """A fragment folder itself, or the fragment folders inside ``path`` (e.g. ``train/``), sorted."""
    path = Path(path)
    if (path / "surface_volume").is_dir():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: folder not found")
    found = sorted(p for p in path.iterdir() if (p / "surface_volume").is_dir())
    if not found:
        raise InputError(f"{path}: no fragment folders (expected <id>/surface_volume/00.tif ...)")
    return found


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__
