"""How much of each source's C51 output underflows on each target game's frames.

Before HubPathway's ``log_space`` the hub logged its probabilities as ``log(clamp(p, 1e-8))``, so an (action,
atom) probability below 1e-8 gave the exploit loss (and the mixture's task loss) no gradient.  This measures the
share of such probabilities for the shipped sources on frames of random play (every 10th of 400 agent steps, seed 0)
of each game, with the mapped output layers a hub run starts from, and, for each hub run folder given, of the
sources as that run's final ``model.zip`` left them (``q_net.hub.models.<i>.net.*``, read with ``weights_only``).

    .venv/bin/python eval/diagnostics/hub_underflow.py [RUN_DIR ...]   # writes eval/diagnostics/hub_underflow.md
"""
import functools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.enjoy import read_policy_weights
from rlzoo_transfer.envs import make_env
from rlzoo_transfer.games import action_meanings
from rlzoo_transfer.provenance import git_commit, versions
from rlzoo_transfer.rl.policies import DERNetwork
from rlzoo_transfer.yamlfile import load as load_yaml
from rlzoo_transfer.zoo import load_zoo

GAMES, SOURCES = ("Alien", "Gopher", "Jamesbond"), ("Seaquest", "Riverraid")


@functools.cache   # one game's frames serve its sources and every trained run of it
def frames(game: str, steps: int = 400, every: int = 10) -> torch.Tensor:
    env, rng = make_env(game, 1, seed=0), np.random.default_rng(0)
    env.reset()
    out = []
    for t in range(steps):
        obs, *_ = env.step(np.array([rng.integers(len(action_meanings(game)))]))
        if t % every == 0:
            out.append(obs[0])
    env.close()
    return torch.as_tensor(np.stack(out)).float() / 255   # DERPolicy's scaling


def row(label: str, source: str, sd: dict, x: torch.Tensor, n: int) -> str:
    net = DERNetwork(n)   # DER's defaults: 51 atoms, hidden 256, sigma0 0.1
    net.load_state_dict(sd)
    with torch.no_grad():
        log_p = net.eval()(x)
    below = (log_p < math.log(1e-8)).float().mean().item()
    return f"| {label} | {source} | {len(x)} | {100 * below:.1f} % | {log_p.min().item():.1f} |"


def trained_rows(run_dir: Path) -> list[str]:
    """The sources as hub run ``run_dir`` ended: its final model.zip's ``q_net.hub.models.<i>.net.*``."""
    config = load_yaml(run_dir / "config.yml", SystemExit, "give a hub run folder")
    game, sources = config["game"], config["hyperparams"]["sources"].split(",")
    weights = read_policy_weights(run_dir / "model.zip")
    x, n = frames(game), len(action_meanings(game))
    out = []
    for i, source in enumerate(sources):
        prefix = f"q_net.hub.models.{i}.net."
        sd = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        commit = str(config.get("commit", "?"))[:7]
        out.append(row(f"{game} {config['method']} seed {config['seed']} (commit {commit})", source, sd, x, n))
    return out


def main(run_dirs: list[str]) -> None:
    torch.set_num_threads(1)
    rows = []
    for game in GAMES:
        x, n = frames(game), len(action_meanings(game))
        sds = load_zoo(list(SOURCES), DERNetwork(n), action_meanings(game), n_atoms=51)
        rows += [row(game, source, sd, x, n) for source, sd in zip(SOURCES, sds)]
    trained = [r for d in run_dirs for r in trained_rows(Path(d))]
    text = "\n".join([
        "# Source probabilities below 1e-8 on target frames", "",
        f"`.venv/bin/python eval/diagnostics/hub_underflow.py`, commit {git_commit()}, {time.strftime('%Y-%m-%d')}, "
        f"versions {versions()}.", "",
        "Share of the sources' (action, atom) probabilities below 1e-8 (no gradient through `log(clamp(p, 1e-8))`, "
        "the hub's log before `log_space`), on frames of random play of each target game; smallest log p.", "",
        "| game | source | frames | p < 1e-8 | min log p |", "|---|---|---|---|---|", *rows, "",
        *(["After training: the sources as each hub run's final `model.zip` left them (same frames; `log_space` "
           "runs start at commit f8443a4).", "",
           "| run | source | frames | p < 1e-8 | min log p |", "|---|---|---|---|---|", *trained, ""]
          if trained else [])])
    write_atomic(Path(__file__).with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
