"""Output paths checked before the work: a run folder, report or JSON that cannot be written is a usage error.

``train --log-dir FILE`` used to build the model and then end in a ``NotADirectoryError`` traceback; ``bench --out
/read-only/x.json`` measured for minutes and then lost its numbers.  Every CLI now calls :func:`check_outputs`
right after parsing its arguments (torch-free, so the error is instant): each output folder must exist as a
folder or be creatable under its nearest existing ancestor, each output file's folder likewise, and that folder
writable.  What cannot be known in advance (a full disk, a file system that refuses ``mkdir``) still fails where
it happens, with each CLI's own message.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence


def unwritable(path: str | Path, folder: bool) -> str | None:
    """Why ``path`` cannot be written as a folder (``folder``) or as a file, or None if it can.

    The folder that must hold the output (``path`` itself, or a file's parent) has to be a writable folder, or
    not exist yet under a writable folder.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        return f"{path} is a {'file' if folder else 'folder'}, not a {'folder' if folder else 'file'}"
    probe = path if folder else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def check_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace, folders: Sequence[str] = (),
                  files: Sequence[str] = ()) -> None:
    """``parser.error`` (exit 2) naming the first option among ``folders`` / ``files`` (argument dests, e.g.
    ``log_dir``) whose path cannot be written; options left unset (None) are skipped."""
    for dests, folder in ((folders, True), (files, False)):
        for dest in dests:
            path = getattr(args, dest)
            why = unwritable(path, folder) if path is not None else None
            if why:
                parser.error(f"argument --{dest.replace('_', '-')}: cannot write {path}: {why}")
