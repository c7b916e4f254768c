"""Atomic file output: write to a temporary name in the same folder, rename on success.

A reader never sees a half-written file, and a writer that fails (or is interrupted by an
exception) leaves nothing behind::

    with atomic_path("out/scan.h5") as tmp:
        write_something(tmp)          # tmp: out/.scan.h5.tmp-<random>.h5
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def _suffixes(name: str) -> str:
    """The file's suffixes (``.nii.gz`` for ``a.nii.gz``), so format detection still works."""
    return "".join(Path(name).suffixes[-2:]) if name.endswith(".gz") else Path(name).suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    The temporary name keeps the suffixes of ``path`` (libraries such as nibabel choose the
    format from them). When the block raises, the temporary file is removed and the
    exception propagates; an existing file at ``path`` is left untouched.

    Raises:
        FileNotFoundError: the output folder does not exist.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {folder} does not exist (writing {target.name})")
    tmp = folder / f".{target.name}.tmp-{secrets.token_hex(4)}{_suffixes(target.name)}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file for {target}")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))
