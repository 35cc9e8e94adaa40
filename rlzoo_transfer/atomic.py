"""Atomic file writes: a reader (or a run killed mid-write) never sees a half-written result file.

Every writer goes through :func:`replacing`: the content is written to a temporary file in the destination's folder
(same file system, so the final ``os.replace`` is an atomic rename), flushed to disk, given the permissions a plain
``open(path, "w")`` would give (``mkstemp`` makes 0600), and renamed over the destination.  On an error the
temporary file is removed and the destination is left as it was; an OSError that names no file (a ``write`` on a
full disk) is raised again naming the destination.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def naming_the_file(path: str | Path) -> Iterator[None]:
    """Raise an OSError of the block that names no file (a ``write`` on a full disk) again naming ``path``."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it atomically becomes ``path``.

    The temporary name ends in ``.tmp``, so writers that infer a format from the suffix (``savefig``) must be
    told the format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        with naming_the_file(path):
            yield tmp
            with open(tmp, "rb+") as f:   # the writer may have closed it without fsync
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text)
