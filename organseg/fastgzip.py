"""gzip in long calls, so that it runs beside other work: ``.nii.gz`` inflated ahead, masks deflated on two cores.

zlib releases the GIL while it inflates or deflates, but Python's ``gzip`` module (and nibabel through it)
works 8 KB at a time and hands the GIL back and forth thousands of times per file. Here the calls are long:

- ``GunzipAhead`` reads a whole file and inflates it in a daemon thread, in a few large calls into one
  preallocated buffer. ``organseg infer`` starts one before it imports torch and MONAI (2 s on 2 cores),
  which takes the 0.7 s of inflating a 512 x 512 x 300 CT off the critical path. Only the bytes are
  prepared: the NIfTI header, its checks and every error message stay in ``organseg.io.nifti``, on the
  main thread, which falls back to its ordinary read whenever the helper has nothing (an error, a
  multi-member gzip, a file that changed since).
- ``write_gzip`` deflates pieces of a buffer in parallel threads and joins them into one ordinary
  single-member gzip stream, as pigz does: every piece but the last ends with a sync flush, so the raw
  deflate pieces concatenate into one valid stream. Any gzip reader reads it.

Standard library and numpy only, so that importing this module costs nothing.

Example::

    ahead = GunzipAhead(Path("ct.nii.gz"))   # returns at once
    ...                                       # import torch, load the model
    vol = read_image(Path("ct.nii.gz"), kind="ct", prefetched=ahead)
"""

from __future__ import annotations

import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np

#: Compressed bytes handed to zlib per call: large enough that the GIL is released for long stretches.
CHUNK_BYTES = 32 << 20
#: Below this size ``write_gzip`` deflates in one piece (threads would cost more than they save).
PARALLEL_MIN_BYTES = 8 << 20
#: gzip header: magic, deflate, no flags, mtime 0 (outputs are reproducible), no extra flags, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


class GunzipAhead:
    """The decompressed contents of one gzip file, inflated in a daemon thread started on construction.

    Args:
        path: a single-member gzip file (what nibabel and SimpleITK write).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self._stamp = _stamp(self.path)
        self._data: np.ndarray | None = None
        self._thread = threading.Thread(target=self._run, name="organseg-gunzip", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._data = gunzip(self.path.read_bytes())
        except (OSError, zlib.error, ValueError, MemoryError):
            self._data = None  # the main thread's ordinary read reports what is wrong

    def take(self, path: str | Path) -> np.ndarray | None:
        """The file's decompressed bytes (writable ``uint8``), once; ``None`` if they are not usable.

        ``None`` when ``path`` is another file, the file changed since the read started, it was taken
        already, or inflating failed: the caller then reads the file the ordinary way.
        """
        if Path(path).resolve() != self.path:
            return None
        self._thread.join()
        data, self._data = self._data, None
        if data is None or _stamp(self.path) != self._stamp:
            return None
        return data


def gunzip(compressed: bytes) -> np.ndarray | None:
    """Inflate a single-member gzip stream into a writable ``uint8`` array; ``None`` if it is not one.

    The size comes from the gzip trailer (ISIZE, the length modulo 2^32) and is checked against what the
    stream really holds, so a multi-member file, trailing bytes, a truncated stream or a file of 4 GiB or
    more gives ``None`` rather than wrong bytes.

    Raises:
        zlib.error: the data is not valid deflate data.
    """
    if len(compressed) < 18 or compressed[:2] != b"\x1f\x8b":
        return None
    size = int.from_bytes(compressed[-4:], "little")
    out = np.empty(size, dtype=np.uint8)
    inflater = zlib.decompressobj(wbits=31)
    view = memoryview(compressed)
    done = 0
    for start in range(0, len(view), CHUNK_BYTES):
        piece = inflater.decompress(view[start : start + CHUNK_BYTES])
        if done + len(piece) > size:
            return None
        out[done : done + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        done += len(piece)
    # A whole stream leaves nothing for flush(); a truncated one is not at eof.
    if inflater.flush() or not inflater.eof or inflater.unused_data or done != size:
        return None
    return out


def write_gzip(data: bytes | memoryview, out: BinaryIO, level: int = 1, workers: int = 2) -> None:
    """Write ``data`` to ``out`` as one gzip member, deflated in ``workers`` pieces in parallel.

    Args:
        data: the uncompressed bytes (for a NIfTI file: ``img.to_bytes()``).
        out: a binary file open for writing.
        level: zlib level; 1, nibabel's default for ``.nii.gz``, is the fast one.
        workers: pieces deflated at once; 1 or data under ``PARALLEL_MIN_BYTES`` gives one piece.
    """
    view = memoryview(data).cast("B")
    pieces = max(1, workers) if view.nbytes >= PARALLEL_MIN_BYTES else 1
    step = -(-view.nbytes // pieces)
    bounds = [(i * step, min(view.nbytes, (i + 1) * step)) for i in range(pieces)]

    def deflate(index: int) -> bytes:
        start, stop = bounds[index]
        packer = zlib.compressobj(level, zlib.DEFLATED, -15)  # raw deflate: the header is ours
        last = index == pieces - 1
        return packer.compress(view[start:stop]) + packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    if pieces == 1:
        parts = [deflate(0)]
        crc = zlib.crc32(view)
    else:
        with ThreadPoolExecutor(pieces) as pool:
            futures = [pool.submit(deflate, i) for i in range(pieces)]
            crc = zlib.crc32(view)  # meanwhile, on this thread
            parts = [f.result() for f in futures]
    out.write(_GZIP_HEADER)
    for part in parts:
        out.write(part)
    out.write(crc.to_bytes(4, "little") + (view.nbytes & 0xFFFFFFFF).to_bytes(4, "little"))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
