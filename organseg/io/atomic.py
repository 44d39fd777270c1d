"""Atomic output: write to a temporary file beside the target, then ``os.replace`` it."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from organseg.errors import OutputError

#: Failures of the file system, not of organseg: a full disk or quota, a read-only mount, no permission.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched, so a crash never
    leaves a half-written output. The temporary name keeps the suffix (``.nii.gz``, ``.mp4``) so
    writers that dispatch on it work.
    """
    path = Path(path)
    check_writable(path, overwrite=overwrite)
    name = path.name
    suffix = "".join(path.suffixes[-2:]) if name.endswith(".nii.gz") else path.suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as err:
        raise OutputError(f"{path}: cannot create a file in {path.parent} ({err.strerror or err})") from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the output the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        raise OutputError(f"{path}: cannot write ({err.strerror or err})") from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | Path, overwrite: bool = True) -> None:
    """Raise ``OutputError`` unless ``path`` can be created in an existing, writable folder."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise OutputError(f"{path}: {blocker} is a file, not a folder")
        raise OutputError(f"{path}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: output folder {parent} is not writable")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected a file path")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists (pass --overwrite to replace it)")


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        # UTF-8 whatever the locale: GDCM (DICOM reading) switches the process to the ASCII "C" locale.
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: object, overwrite: bool = True) -> None:
    """Write ``data`` as JSON via ``json_safe`` (so NaN/inf, paths and numpy scalars never break it)."""
    atomic_write_text(
        path, json.dumps(json_safe(data), indent=2, sort_keys=False) + "\n", overwrite=overwrite
    )


def json_safe(obj: object) -> object:
    """A strict-JSON copy: non-finite floats become ``null``, paths strings, numpy scalars Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
