"""The zoo's manifest ``zoo.yml`` without torch: where the shipped zoo lies, its sources, and how to mend it.

:mod:`rlzoo_transfer.zoo` loads and verifies the source checkpoints (torch); ``sweep`` plans without torch and
checks ``--methods`` / ``-p sources=`` against the same manifest through :func:`read_manifest`, so that both read
it one way and say the same when it is missing or damaged.
"""
from __future__ import annotations

from pathlib import Path

from rlzoo_transfer import yamlfile

DEFAULT_ZOO = Path(__file__).resolve().parent.parent / "pretrain"


class ZooError(ValueError):
    """A missing, corrupt or mismatched zoo; the message says how to fix it."""


def in_git(path: Path | str) -> bool:
    """Whether git can restore ``path``: a file of this repository's HEAD (the shipped ``pretrain/`` zoo), not a
    copied zoo outside the checkout or an untracked one inside it."""
    from rlzoo_transfer.provenance import file_in_commit

    return bool(file_in_commit("HEAD", path))


def pretrain_command(game: str, zoo_dir: Path | str) -> str:
    """The pretrain command that (re)makes ``game``'s source in ``zoo_dir`` (pretrain's default zoo: no --zoo-dir)."""
    there = "" if Path(zoo_dir).resolve() == DEFAULT_ZOO else f" --zoo-dir {zoo_dir}"
    return f"`python -m rlzoo_transfer.pretrain --game {game}{there}`"


def restore_advice(path: Path | str, remake: str) -> str:
    """How to get a damaged or missing zoo file back: ``git checkout`` where git has it (:func:`in_git`), else copy
    it again (a zoo outside the checkout, or one made here but not committed); or ``remake`` (e.g. a pretrain
    command)."""
    if in_git(path):
        return f"restore it (`git checkout {path}`) or {remake}"
    return f"copy it again from where it came from, or {remake}"


def read_manifest(zoo_dir: Path | str = DEFAULT_ZOO, flag: str = "-p zoo_dir=DIR") -> dict[str, dict]:
    """The manifest's ``sources`` (source name -> entry); ``flag`` is how the command the user ran names a zoo
    folder (train's ``-p zoo_dir=DIR``, enjoy's ``--zoo-dir DIR``), for the hint when there is no manifest.

    :raises ZooError: no manifest, one that is not YAML, or one that lists no sources, each with how to mend it
    """
    path = Path(zoo_dir) / "zoo.yml"
    if not path.exists():
        raise ZooError(f"no zoo manifest at {path}: train sources with {pretrain_command('Seaquest', zoo_dir)} "
                       f"(and Riverraid), or point to a zoo folder with {flag}")
    data = yamlfile.load(path, ZooError, lambda: restore_advice(path, "mend it by hand"))
    sources = data.get("sources") if isinstance(data, dict) else None
    if not isinstance(sources, dict) or not sources:
        raise ZooError(f"{path} lists no sources; pretrain some with {pretrain_command('GAME', zoo_dir)}")
    return sources
