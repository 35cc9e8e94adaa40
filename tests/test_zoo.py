"""The source zoo (rlzoo_transfer/zoo.py): the shipped pretrain/ zoo verifies and loads; a missing, corrupt or
mismatched zoo is a ``ZooError`` whose message says how to fix it, from the library, from every method's builder,
and from the train CLI (exit 2, one line, no traceback)."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from gymnasium import spaces

from rlzoo_transfer import train
from rlzoo_transfer.games import action_meanings
from rlzoo_transfer.rl.policies import DERNetwork
from rlzoo_transfer.rl.registry import METHODS
from rlzoo_transfer.zoo import (DEFAULT_ZOO, ZooError, check_architecture, in_git, load_source, load_zoo,
                                map_actions, pretrain_command, read_manifest)
from tests.conftest import run_module

SOURCES = ("Seaquest", "Riverraid")
K = 51
GOPHER = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "UPFIRE", "RIGHTFIRE", "LEFTFIRE"]
BREAKOUT = ["NOOP", "FIRE", "RIGHT", "LEFT"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def zoo(tmp_path) -> Path:
    """A copy of the shipped zoo to break."""
    out = tmp_path / "zoo"
    out.mkdir()
    for name in ("zoo.yml", "Seaquest.pt", "Riverraid.pt"):
        shutil.copy(DEFAULT_ZOO / name, out / name)
    return out


def edit_manifest(zoo_dir: Path, fn) -> None:
    data = yaml.safe_load((zoo_dir / "zoo.yml").read_text())
    fn(data["sources"])
    (zoo_dir / "zoo.yml").write_text(yaml.safe_dump(data, sort_keys=False))


def add_source(zoo_dir: Path, game: str, state_dict: dict, actions: list[str]) -> None:
    """A checkpoint ``<game>.pt`` recorded in the manifest with its true sha256 (a valid, if mismatched, entry)."""
    torch.save(state_dict, zoo_dir / f"{game}.pt")
    digest = sha256(zoo_dir / f"{game}.pt")
    edit_manifest(zoo_dir, lambda s: s.update({game: {"game": game, "file": f"{game}.pt", "sha256": digest,
                                                      "actions": actions}}))


def gopher_zoo(zoo_dir: Path, games=SOURCES, template: DERNetwork | None = None, **kw) -> list[dict]:
    return load_zoo(list(games), template or DERNetwork(8), GOPHER, K, zoo_dir, **kw)


# --- the shipped zoo ----------------------------------------------------------------------------------------------
def test_the_shipped_zoo_verifies_and_matches_the_der_network():
    manifest = read_manifest()
    assert set(SOURCES) <= set(manifest)
    for game in SOURCES:
        entry = manifest[game]
        assert entry["file"] == f"{game}.pt" and entry["network"] == "DERNetwork"
        assert sha256(DEFAULT_ZOO / entry["file"]) == entry["sha256"]
        src = load_source(game)
        assert src.actions == action_meanings(game) and len(src.actions) == 18
        reference = DERNetwork(18).state_dict()
        assert {k: tuple(v.shape) for k, v in src.state_dict.items()} == {k: tuple(v.shape)
                                                                          for k, v in reference.items()}
        check_architecture(src, DERNetwork(8))  # any target: the output layer is mapped separately
    assert GOPHER == action_meanings("Gopher")


def test_actions_are_mapped_by_meaning():
    src = load_source("Seaquest")
    sd = map_actions(src, ["UPFIRE", "NOOP"], K)
    w = src.state_dict["advantage_out.weight_mu"]
    assert torch.equal(sd["advantage_out.weight_mu"], torch.cat([w[10 * K:11 * K], w[:K]]))
    assert torch.equal(sd["advantage_out.bias_sigma"][:K], src.state_dict["advantage_out.bias_sigma"][10 * K:11 * K])
    assert torch.equal(sd["value_out.weight_mu"], src.state_dict["value_out.weight_mu"])
    sd["conv1.weight"].add_(1.0)  # a copy: the loaded source is not modified through it
    assert not torch.equal(sd["conv1.weight"], src.state_dict["conv1.weight"])


# --- a missing or corrupt zoo ------------------------------------------------------------------------------------
def test_missing_manifest(tmp_path):
    with pytest.raises(ZooError, match="no zoo manifest") as e:
        gopher_zoo(tmp_path)
    assert str(tmp_path / "zoo.yml") in str(e.value)
    assert "rlzoo_transfer.pretrain --game Seaquest" in str(e.value) and "-p zoo_dir=" in str(e.value)


@pytest.mark.parametrize("text,message", [("sources: [unclosed", "not valid YAML"), ("", "lists no sources"),
                                          ("sources: {}\n", "lists no sources"), ("- a list\n", "lists no sources")])
def test_unreadable_or_empty_manifest(zoo, text, message):
    (zoo / "zoo.yml").write_text(text)
    with pytest.raises(ZooError, match=message) as e:
        gopher_zoo(zoo)
    assert "\n" not in str(e.value)


def test_a_manifest_that_cannot_be_read_is_one_line(zoo):
    """A zoo.yml that exists but is a folder was an IsADirectoryError traceback."""
    (zoo / "zoo.yml").unlink()
    (zoo / "zoo.yml").mkdir()
    with pytest.raises(ZooError, match=r"cannot read .*zoo.yml: Is a directory; copy it again from where it came "
                                       r"from, or mend it by hand") as e:
        gopher_zoo(zoo)
    assert "\n" not in str(e.value)


def test_restore_advice_is_asked_of_git_only_for_a_damaged_manifest(zoo, monkeypatch):
    """Whether git can restore the manifest is a subprocess; a good manifest (read ~3 times per run start, once per
    method by sweep) does not pay for it, and a damaged one still gets the advice."""
    from rlzoo_transfer import manifest

    asked = []
    monkeypatch.setattr(manifest, "in_git", lambda path: asked.append(Path(path)) or False)
    assert set(SOURCES) <= set(read_manifest(zoo))
    assert asked == []
    (zoo / "zoo.yml").write_text("sources: [unclosed")
    with pytest.raises(ZooError, match=r"not valid YAML .*; copy it again from where it came from, or mend it"):
        read_manifest(zoo)
    assert asked == [zoo / "zoo.yml"]


def test_source_not_in_the_manifest(zoo):
    with pytest.raises(ZooError, match=r"source 'Pong' is not in .*zoo.yml \(it has Seaquest, Riverraid\)"):
        gopher_zoo(zoo, ["Seaquest", "Pong"])


def test_no_sources_named(zoo):
    with pytest.raises(ZooError, match="no sources named: set -p sources=A,B"):
        gopher_zoo(zoo, [])


@pytest.mark.parametrize("key", ["file", "sha256", "actions"])
def test_manifest_entry_missing_a_field(zoo, key):
    edit_manifest(zoo, lambda s: s["Riverraid"].pop(key))
    with pytest.raises(ZooError, match=f"source 'Riverraid' in .*zoo.yml has no '{key}'.*pretrain --game Riverraid"):
        gopher_zoo(zoo)


def test_missing_checkpoint(zoo):
    """A copied zoo outside the checkout: no ``git checkout`` advice (git cannot restore it), but a copy or a
    pretrain into that zoo."""
    (zoo / "Riverraid.pt").unlink()
    with pytest.raises(ZooError, match=r"Riverraid.pt is missing: copy it again from where it came from, or re-run "
                                       rf"`python -m rlzoo_transfer.pretrain --game Riverraid --zoo-dir {zoo}`$"):
        gopher_zoo(zoo)


def test_checkpoint_with_another_sha256(zoo):
    data = bytearray((zoo / "Seaquest.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: a tensor value, torch.load alone would not notice
    (zoo / "Seaquest.pt").write_bytes(bytes(data))
    recorded = yaml.safe_load((zoo / "zoo.yml").read_text())["sources"]["Seaquest"]["sha256"][:12]
    with pytest.raises(ZooError, match=r"Seaquest.pt is corrupt or changed: sha256 [0-9a-f]{12}\.\.\. but zoo.yml "
                                       rf"records {recorded}\.\.\.; copy it again .*pretrain --game Seaquest "
                                       r"--zoo-dir .*, or correct its sha256 in zoo.yml") as e:
        gopher_zoo(zoo)
    assert "git checkout" not in str(e.value)   # was `git checkout /tmp/.../Seaquest.pt`: not a file of the repository


def test_a_file_of_the_shipped_zoo_is_restored_with_git(zoo):
    """Only a file git has (pretrain/ of this checkout) gets ``git checkout`` advice: here a manifest outside the
    checkout whose entry names the shipped Seaquest.pt, with a sha256 that does not match it."""
    if not in_git(DEFAULT_ZOO / "Seaquest.pt"):
        pytest.skip("no git checkout here (a copy of the tree)")
    shipped = DEFAULT_ZOO / "Seaquest.pt"
    edit_manifest(zoo, lambda s: s["Seaquest"].update(file=str(shipped), sha256="0" * 64))
    with pytest.raises(ZooError, match=rf"restore it \(`git checkout {shipped}`\) or re-run `python -m "
                                       rf"rlzoo_transfer.pretrain --game Seaquest --zoo-dir {zoo}`"):
        gopher_zoo(zoo)
    assert not in_git(zoo / "Seaquest.pt") and not in_git(zoo / "zoo.yml")   # a copy is not the repository's
    assert in_git(DEFAULT_ZOO / "zoo.yml") and not in_git(DEFAULT_ZOO / "NotThere.pt")
    assert pretrain_command("Pong", DEFAULT_ZOO) == "`python -m rlzoo_transfer.pretrain --game Pong`"


class Trap:
    """A pickle that would create ``marker`` if it were unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def unreadable(kind: str, zoo_dir: Path, path: Path) -> str:
    """Write a bad checkpoint of ``kind`` at ``path``; return the message its ZooError must contain."""
    if kind == "garbage":
        path.write_bytes(b"this is not a torch checkpoint\n" * 100)
        return "cannot read"
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:100_000])  # a copy cut short
        return "cannot read"
    if kind == "code":
        torch.save({"conv1.weight": Trap(zoo_dir / "pwned")}, path)
        return "cannot read"
    if kind == "tensor":
        torch.save(torch.zeros(3), path)
        return "is not a state_dict of tensors"
    if kind == "not-tensors":
        torch.save({"conv1.weight": [1.0, 2.0]}, path)
        return "is not a state_dict of tensors"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "code", "tensor", "not-tensors"])
def test_unreadable_checkpoint_with_its_sha256_recorded(zoo, kind):
    path = zoo / "Seaquest.pt"
    message = unreadable(kind, zoo, path)
    digest = sha256(path)
    edit_manifest(zoo, lambda s: s["Seaquest"].update(sha256=digest))
    with pytest.raises(ZooError, match=message) as e:
        gopher_zoo(zoo)
    assert str(path) in str(e.value)
    assert not (zoo / "pwned").exists()  # tensors only: nothing in the file was executed


# --- a mismatched zoo ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("network,message", [
    (dict(hidden=128), r"parameter 'value_hidden.weight_mu' has shape \(128, 576\), the target network has "
                       r"\(256, 576\); set the same hidden / n_atoms"),
    (dict(n_atoms=21), r"parameter 'value_out.weight_mu' has shape \(21, 256\), the target network has \(51, 256\)"),
])
def test_source_network_of_another_shape(zoo, network, message):
    add_source(zoo, "Small", DERNetwork(18, **network).state_dict(), action_meanings("Seaquest"))
    with pytest.raises(ZooError, match=message):
        gopher_zoo(zoo, ["Seaquest", "Small"])


def test_source_network_with_missing_or_extra_parameters(zoo):
    sd = DERNetwork(18).state_dict()
    add_source(zoo, "Extra", {**sd, "conv3.weight": torch.zeros(1)}, action_meanings("Seaquest"))
    with pytest.raises(ZooError, match="source Extra: unexpected parameter 'conv3.weight'"):
        gopher_zoo(zoo, ["Extra"])
    del sd["conv2.bias"]
    add_source(zoo, "Missing", sd, action_meanings("Seaquest"))
    with pytest.raises(ZooError, match="source Missing: parameter 'conv2.bias' missing"):
        gopher_zoo(zoo, ["Missing"])


def test_source_without_a_target_action(zoo):
    """A 4-action (Breakout) source cannot give Gopher's UP its output rows; fresh output layers can."""
    src = DERNetwork(4)
    add_source(zoo, "Breakout", src.state_dict(), BREAKOUT)
    with pytest.raises(ZooError, match=r"source Breakout has no action 'UP' \(it has NOOP, FIRE, RIGHT, LEFT\); "
                                       r"use fresh output layers \(-p fresh_output=true\)"):
        gopher_zoo(zoo, ["Seaquest", "Breakout"])
    # what the message advises works
    template = DERNetwork(8)
    sds = gopher_zoo(zoo, ["Seaquest", "Breakout"], template, fresh_output=True)
    for key, value in sds[1].items():
        reference = template if key.startswith("advantage_out.") else src
        assert torch.equal(value, reference.state_dict()[key]), key
    # and a Breakout target takes all four rows of the Breakout source
    (sd,) = load_zoo(["Breakout"], DERNetwork(4), BREAKOUT, K, zoo)
    assert torch.equal(sd["advantage_out.weight_mu"], src.advantage_out.weight_mu)


def test_manifest_actions_that_do_not_match_the_output_layer(zoo):
    add_source(zoo, "Liar", DERNetwork(4).state_dict(), action_meanings("Seaquest"))  # 4 actions' rows, 18 names
    with pytest.raises(ZooError, match="advantage_out.weight_mu has 204 rows, expected 18 actions x 51 atoms"):
        gopher_zoo(zoo, ["Liar"])


@pytest.mark.parametrize("method", ["finetune", "zoo", "zoo-lite", "hub", "kflow"])
def test_every_method_builder_raises_the_zoo_error(zoo, method):
    (zoo / "Seaquest.pt").write_bytes(b"")
    builder = METHODS[method].build
    extra = {"source": "Seaquest"} if METHODS[method].needs_source else {}
    obs = spaces.Box(0, 255, (4, 84, 84), dtype="uint8")
    with pytest.raises(ZooError, match="Seaquest.pt is corrupt or changed"):
        builder(obs, 8, game="Gopher", zoo_dir=str(zoo), **extra)


# --- the train CLI ------------------------------------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("train", *args)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("method", ["zoo", "finetune"])
def test_cli_with_a_corrupt_zoo_is_a_one_line_error(zoo, tmp_path, method):
    data = bytearray((zoo / "Seaquest.pt").read_bytes())
    data[-100] ^= 0x01
    (zoo / "Seaquest.pt").write_bytes(bytes(data))
    log = tmp_path / "runs"
    source = ["--source", "Seaquest"] if method == "finetune" else []
    proc = cli("--game", "Gopher", "--method", method, *source, "--steps", "200", "--log-dir", str(log),
               "-p", f"zoo_dir={zoo}", "learning_starts=100", "--no-progress")
    line = one_line_error(proc)
    assert "Seaquest.pt is corrupt or changed" in line and "git checkout" not in line
    assert f"pretrain --game Seaquest --zoo-dir {zoo}`" in line
    assert not list(log.rglob("config.yml")) and not list(log.rglob("*.csv")), "nothing was started"


def test_cli_finetune_from_a_source_not_in_the_zoo(tmp_path):
    proc = cli("--game", "Gopher", "--method", "finetune", "--source", "Pong", "--steps", "200",
               "--log-dir", str(tmp_path), "--no-progress")
    line = one_line_error(proc)
    assert "source 'Pong' is not in" in line and "Seaquest, Riverraid" in line


def test_cli_finetune_without_source(tmp_path, capsys):
    rc = train.main(["--game", "Gopher", "--method", "finetune", "--log-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == "error: --method finetune needs --source (e.g. --source Seaquest)"
    assert not list(tmp_path.iterdir())


def test_cli_with_no_zoo_manifest(tmp_path, capsys):
    empty = tmp_path / "nozoo"
    empty.mkdir()
    rc = train.main(["--game", "Gopher", "--method", "hub", "--log-dir", str(tmp_path / "runs"), "-p",
                     f"zoo_dir={empty}", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no zoo manifest at ") and "zoo_dir=" in lines[0]
