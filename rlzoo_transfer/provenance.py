"""Where a result came from: the commit of the code that made it and the versions of the packages it ran on.

One definition for every CLI (train, pretrain, bench, the vision CLIs), so that "dirty" means the same in a run's
``config.yml`` and in a vision run's ``config.json``: the tree differs from HEAD in the code that shapes results -
tracked or untracked files under ``CODE_PATHS`` (the package, its scripts, the hyperparameters, the pretrained
zoo, the packaging).  Results, docs and scratch folders (``eval/``, ``README.md``, ``runs/``) do not count: the
autopublisher rewrites them while runs are going.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CODE_PATHS = ("rlzoo_transfer", "scripts", "agents", "pretrain", "pyproject.toml")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_head() -> str | None:
    """HEAD's sha, $RLZOO_COMMIT where the tree is a copy without ``.git`` (a device machine), else None."""
    return os.environ.get("RLZOO_COMMIT") or _git("rev-parse", "HEAD")


def git_dirty() -> bool | None:
    """True when files under ``CODE_PATHS`` differ from HEAD or are untracked; None when git cannot tell."""
    if os.environ.get("RLZOO_COMMIT"):
        return None
    out = _git("status", "--porcelain", "--", *(f":/{p}" for p in CODE_PATHS))
    return None if out is None else bool(out)


def git_commit() -> str:
    """``<sha>`` or ``<sha>-dirty`` (see :func:`git_dirty`), ``unknown`` outside a checkout: one string to record."""
    head = git_head()
    return (head or "unknown") + ("-dirty" if git_dirty() else "")


def file_in_commit(commit: str, path: str | Path) -> bool | None:
    """Whether ``path`` (a file of this checkout) exists in commit ``commit`` (``-dirty`` suffix ignored); None when
    git cannot tell: no git, a commit this clone does not have (shallow, another fork), a path outside the tree."""
    sha = str(commit).removesuffix("-dirty")
    try:
        rel = Path(path).resolve().relative_to(PROJECT_ROOT)
    except ValueError:
        return None
    if not sha or _git("cat-file", "-e", f"{sha}^{{commit}}") is None:
        return None
    return _git("cat-file", "-e", f"{sha}:{rel.as_posix()}") is not None


def versions(packages: tuple[str, ...] = ("rlzoo_transfer", "torch", "stable-baselines3", "gymnasium", "ale-py",
                                          "numpy")) -> dict[str, str | None]:
    """Python's version and each installed package's (None for one not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
