"""Decompress a ``.nii.gz`` file in a background thread while the process is still importing torch.

``organseg infer`` spends its first two seconds importing torch and MONAI, and reading a 512 x 512 x 300
CT spends 0.7 s in gzip. Both are CPU work, but imports hold the GIL while zlib's inflate releases it, so
the two overlap on two cores only when the inflate runs in long calls: nibabel's reader inflates 8 KB at a
time and hands the GIL back and forth thousands of times. ``GunzipAhead`` reads the whole file and
inflates it in a few large calls into one preallocated buffer.

Only the bytes are prepared here: the NIfTI header, its checks and every error message stay in
``organseg.io.nifti``, on the main thread, which falls back to its ordinary read whenever this helper has
nothing (an error, a multi-member gzip, a file that changed since). Standard library and numpy only, so
that starting it costs nothing.

Example::

    ahead = GunzipAhead(Path("ct.nii.gz"))   # returns at once
    ...                                       # import torch, load the model
    vol = read_image(Path("ct.nii.gz"), kind="ct", prefetched=ahead)
"""

from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path

import numpy as np

#: Compressed bytes handed to zlib per call: large enough that the GIL is released for long stretches.
CHUNK_BYTES = 32 << 20


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
    done = 0
    view = memoryview(compressed)
    for start in range(0, len(compressed) + 1, CHUNK_BYTES):
        last = start + CHUNK_BYTES >= len(compressed)
        piece = inflater.decompress(view[start : start + CHUNK_BYTES])
        if last:
            piece += inflater.flush()
        if done + len(piece) > size:
            return None
        out[done : done + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        done += len(piece)
        if last:
            break
    if not inflater.eof or inflater.unused_data or done != size:
        return None
    return out


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
