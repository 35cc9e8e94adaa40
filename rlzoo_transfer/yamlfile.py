"""Read a YAML file with one-line errors: PyYAML's own messages span several lines and quote the offending text.

Every reader of a file a person may have edited or damaged (agents/*.yml, zoo.yml, a run's config.yml, a
registration) goes through :func:`load`, each with its own error class and advice on how to mend the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml


def problem(err: Exception) -> str:
    """One line for a YAML (or decoding) error: ``line L: problem``."""
    mark = getattr(err, "problem_mark", None)
    if mark is not None and getattr(err, "problem", None):
        return f"line {mark.line + 1}: {err.problem}"
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load(path: Path | str, error: type[Exception], advice: str | Callable[[], str] = "") -> Any:
    """``yaml.safe_load`` of the file at ``path``: None when it is empty, any YAML value otherwise (the caller checks
    its shape).

    ``advice`` may be a function, called only when the file cannot be read: advice that costs work (asking git
    whether the file can be restored) is then not paid on every good read.

    :raises error: ``cannot read PATH: reason`` (absent, a folder, no permission) or ``PATH: not valid YAML (line L:
        problem)``, each followed by ``; advice`` when given
    """
    def tail() -> str:
        text = advice() if callable(advice) else advice
        return f"; {text}" if text else ""

    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or err}{tail()}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid YAML ({problem(err)}){tail()}") from None
