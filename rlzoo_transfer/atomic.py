"""Atomic file writes: a reader (or a run killed mid-write) never sees a half-written result file.

Every writer goes through :func:`replacing`: the content is written to a temporary file in the destination's folder
(same file system, so the final ``os.replace`` is an atomic rename), flushed to disk, given the permissions a plain
``open(path, "w")`` would give (``mkstemp`` makes 0600), and renamed over the destination.  On an error the
temporary file is removed and the destination is left as it was; an OSError that names no file (a ``write`` on a
full disk) is raised again naming the destination.  :func:`save_torch` is ``torch.save`` through the same path.
"""
from __future__ import annotations

import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def naming_the_file(path: str | Path) -> Iterator[None]:
    """Raise an OSError of the block that names no file (a ``write`` on a full disk) again naming ``path``.

    Also one that a writer wrapped on the way out: ``torch.save`` into a file object turns its OSError into a
    RuntimeError ("unexpected pos ...") whose ``__context__`` is the OSError.
    """
    try:
        yield
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except Exception as err:
        cause = err.__context__
        if isinstance(cause, OSError) and cause.errno is not None:
            raise OSError(cause.errno, cause.strerror, str(path)) from err
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


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` atomically, a refused write raised as the OSError naming ``path``.

    Serialised in memory first: given a path, torch writes through its own C++ stream and reports a full disk as a
    RuntimeError that carries no errno; and it names the archive's inner folder after the file, which made the same
    weights hash differently under different temporary names.  The bytes are held in memory once more while they are
    written: a state dict or an RNG state, tens of MB at most here.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with replacing(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
