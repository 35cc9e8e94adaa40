"""The source zoo: validate the sources of ``pretrain/zoo.yml`` (read by :mod:`rlzoo_transfer.manifest`), load
their networks, map actions by meaning.

A checkpoint is data, not code: its sha256 must match the manifest, and it is read with
``torch.load(weights_only=True)`` (tensors only, nothing unpickled).  Each source is a state_dict of
``DERNetwork`` over the game's action set (``actions`` in the manifest: Seaquest and Riverraid use all 18).

Action mapping: the target's action k is the source action with the same meaning (``'UPFIRE'``), so the C51
output layer (``advantage_out``, rows ``a * K + z``) is cut to the target's actions, row block by row block,
and every layer - the output layer included - can be aggregated.  ``fresh_output=True`` drops the sources'
output layer instead (the target's is then freshly initialised by the method).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

# the manifest's torch-free part, importable from here too
from rlzoo_transfer.manifest import (DEFAULT_ZOO, ZooError, in_git, pretrain_command, read_manifest,  # noqa: F401
                                     restore_advice)

OUTPUT_LAYER = "advantage_out"


@dataclass
class Source:
    game: str
    actions: list[str]
    state_dict: dict[str, torch.Tensor]
    entry: dict


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def provenance(games: list[str], zoo_dir: Path | str | None = None) -> dict:
    """What a transfer run's ``config.yml`` records of its sources (``zoo``): the zoo folder as given (``pretrain``
    for the shipped one) and each source's file, sha256, agent steps and final score from the manifest - the sha256
    is the one the loaded checkpoint was verified against - so a run made from a zoo outside this repository still
    names the checkpoints it started from."""
    manifest = read_manifest(zoo_dir or DEFAULT_ZOO)
    sources = {}
    for game in games:
        entry = manifest.get(game) or {}
        sources[game] = {"file": entry.get("file"), "sha256": entry.get("sha256"),
                         "agent_steps": entry.get("agent_steps"),
                         "final_eval_mean": (entry.get("final_eval") or {}).get("mean")}
    return {"dir": str(zoo_dir) if zoo_dir else "pretrain", "sources": sources}


def load_source(game: str, zoo_dir: Path | str = DEFAULT_ZOO, flag: str = "-p zoo_dir=DIR") -> Source:
    """One verified source: manifest entry, sha256, tensors-only load (``flag``: see :func:`read_manifest`)."""
    sources = read_manifest(zoo_dir, flag)
    if game not in sources:
        raise ZooError(f"source {game!r} is not in {Path(zoo_dir) / 'zoo.yml'} (it has {', '.join(sources)})")
    entry = sources[game]
    remake = f"re-run {pretrain_command(game, zoo_dir)}"
    lacking = [k for k in ("file", "sha256", "actions") if not isinstance(entry, dict) or k not in entry]
    if lacking:
        manifest = Path(zoo_dir) / "zoo.yml"
        raise ZooError(f"source {game!r} in {manifest} has no {lacking[0]!r}; "
                       f"{restore_advice(manifest, remake)}")
    path = Path(zoo_dir) / entry["file"]
    if not path.exists():
        raise ZooError(f"source checkpoint {path} is missing: {restore_advice(path, remake)}")
    digest = sha256(path)
    if digest != entry["sha256"]:
        fix = restore_advice(path, f"{remake}, or correct its sha256 in zoo.yml if this file is the one you mean")
        raise ZooError(f"source checkpoint {path} is corrupt or changed: sha256 {digest[:12]}... but zoo.yml "
                       f"records {entry['sha256'][:12]}...; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or non-torch file
        raise ZooError(f"cannot read {path} as a tensors-only checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ZooError(f"{path} is not a state_dict of tensors")
    return Source(game, list(entry["actions"]), state, entry)


def check_architecture(source: Source, template: torch.nn.Module) -> None:
    """The source must be the template's architecture (over its own action set): a clear error otherwise."""
    expected = template.state_dict()
    for key, value in expected.items():
        if key.startswith(OUTPUT_LAYER):
            continue  # its rows depend on the action set, checked in map_actions
        if key not in source.state_dict:
            raise ZooError(f"source {source.game}: parameter {key!r} missing - the zoo's network does not match "
                           f"this DER network (different hidden size / atoms?); re-run pretrain")
        if source.state_dict[key].shape != value.shape:
            raise ZooError(f"source {source.game}: parameter {key!r} has shape "
                           f"{tuple(source.state_dict[key].shape)}, the target network has {tuple(value.shape)}; "
                           f"set the same hidden / n_atoms as the zoo (zoo.yml) or re-run pretrain")
    extra = sorted(set(source.state_dict) - set(expected))
    if extra:
        raise ZooError(f"source {source.game}: unexpected parameter {extra[0]!r}; the zoo's network does not match")


def map_actions(source: Source, target_actions: list[str], n_atoms: int) -> dict[str, torch.Tensor]:
    """The source's state_dict with ``advantage_out`` cut to ``target_actions`` by meaning.

    advantage_out maps (.., hidden) -> (.., A_src * K); target action k takes the source rows
    ``[j * K, (j + 1) * K)`` of the source action j with the same meaning.
    """
    missing = [a for a in target_actions if a not in source.actions]
    if missing:
        raise ZooError(f"source {source.game} has no action {missing[0]!r} (it has {', '.join(source.actions)}); "
                       f"use fresh output layers (-p fresh_output=true)")
    index = torch.tensor([source.actions.index(a) for a in target_actions])
    rows = (index[:, None] * n_atoms + torch.arange(n_atoms)[None, :]).reshape(-1)
    out = {}
    for key, value in source.state_dict.items():
        if key.startswith(OUTPUT_LAYER + ".") and value.dim() >= 1:
            if value.shape[0] != len(source.actions) * n_atoms:
                raise ZooError(f"source {source.game}: {key} has {value.shape[0]} rows, expected "
                               f"{len(source.actions)} actions x {n_atoms} atoms")
            value = value.index_select(0, rows)
        out[key] = value.clone()
    return out


def load_zoo(games: list[str], template: torch.nn.Module, target_actions: list[str], n_atoms: int,
             zoo_dir: Path | str = DEFAULT_ZOO, fresh_output: bool = False) -> list[dict[str, torch.Tensor]]:
    """Verified, action-mapped state_dicts of the sources ``games`` for ``template`` (the target's network).

    With ``fresh_output`` the output layer's entries are the template's own (random) parameters.
    """
    if not games:
        raise ZooError("no sources named: set -p sources=A,B to sources listed in the zoo's zoo.yml")
    out = []
    for game in games:
        src = load_source(game, zoo_dir)
        check_architecture(src, template)
        if fresh_output:  # the source's output rows are not used, so its action set does not matter
            sd = {k: v.clone() for k, v in src.state_dict.items() if not k.startswith(OUTPUT_LAYER + ".")}
            sd.update({k: v.clone() for k, v in template.state_dict().items() if k.startswith(OUTPUT_LAYER + ".")})
        else:
            sd = map_actions(src, target_actions, n_atoms)
        out.append(sd)
    return out
