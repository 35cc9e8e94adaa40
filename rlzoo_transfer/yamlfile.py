"""Read a YAML file with one-line errors: PyYAML's own messages span several lines and quote the offending text.

Every reader of a file a person may have edited or damaged (agents/*.yml, zoo.yml, a run's config.yml, a
registration) goes through :func:`load`, each with its own error class and advice on how to mend the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def problem(err: Exception) -> str:
    """One line for a YAML (or decoding) error: ``line L: problem``."""
    mark = getattr(err, "problem_mark", None)
    if mark is not None and getattr(err, "problem", None):
        return f"line {mark.line + 1}: {err.problem}"
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load(path: Path | str, error: type[Exception], advice: str = "") -> Any:
    """``yaml.safe_load`` of the file at ``path``: None when it is empty, any YAML value otherwise (the caller checks
    its shape).

    :raises error: ``cannot read PATH: reason`` (absent, a folder, no permission) or ``PATH: not valid YAML (line L:
        problem)``, each followed by ``; advice`` when given
    """
    tail = f"; {advice}" if advice else ""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or err}{tail}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid YAML ({problem(err)}){tail}") from None
