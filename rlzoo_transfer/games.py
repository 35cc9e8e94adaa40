"""Which games there are and what their actions mean, from ale-py's ROMs alone (no torch, no SB3).

The names users type resolve here (``resolve_game``), so that the planning commands (``sweep``, ``train --help``)
check them without importing the RL stack; :mod:`rlzoo_transfer.envs` builds the environments.
"""
from __future__ import annotations

import difflib

from ale_py import roms

#: The games of the papers, as users type them.  Any other ALE game works too.
PAPER_GAMES = ("Alien", "Gopher", "Jamesbond", "Seaquest", "Riverraid")

FRAMES_PER_EPISODE = 108_000  # 27k agent steps at frame skip 4


class UnknownGameError(ValueError):
    """Raised for a game name that ale-py has no ROM for; the message lists the valid names."""


def _rom_ids() -> list[str]:
    return sorted(roms.get_all_rom_ids())


def _camel(rom_id: str) -> str:
    return "".join(part.capitalize() for part in rom_id.split("_"))


def resolve_game(name: str) -> tuple[str, str]:
    """User game name -> (canonical CamelCase name, ALE rom id).

    Accepts ``Alien``, ``alien``, ``JamesBond``, ``Jamesbond``, ``MsPacman``, ``ms_pacman``, ``ALE/Pong-v5``.
    Raises UnknownGameError listing the valid names (and the closest matches) otherwise.
    """
    raw = name.strip()
    if raw.startswith("ALE/"):
        raw = raw[4:].split("-v")[0]
    key = raw.replace("_", "").replace("-", "").lower()
    by_key = {rid.replace("_", ""): rid for rid in _rom_ids()}
    if key in by_key:
        rid = by_key[key]
        return _camel(rid), rid
    names = [_camel(r) for r in _rom_ids()]
    close = difflib.get_close_matches(raw, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownGameError(f"unknown game {name!r}.{hint} Valid games: {', '.join(names)}")


def action_meanings(game: str, full_action_space: bool = False) -> list[str]:
    """Names of the game's (minimal) action set in order, e.g. ['NOOP', 'FIRE', 'UP', ...]."""
    from ale_py import ALEInterface, LoggerMode

    _, rid = resolve_game(game)
    ALEInterface.setLoggerMode(LoggerMode.Error)   # static, before the constructor prints ALE's banner
    ale = ALEInterface()
    ale.loadROM(roms.get_rom_path(rid))
    acts = ale.getLegalActionSet() if full_action_space else ale.getMinimalActionSet()
    return [a.name for a in acts]
