"""How much of each source's C51 output underflows on each target game's frames.

Before HubPathway's ``log_space`` the hub logged its probabilities as ``log(clamp(p, 1e-8))``, so an (action,
atom) probability below 1e-8 gave the exploit loss (and the mixture's task loss) no gradient.  This measures the
share of such probabilities for the shipped sources on frames of random play (every 10th of 400 agent steps, seed 0)
of each game, with the mapped output layers a hub run starts from.

    .venv/bin/python eval/diagnostics/hub_underflow.py   # writes eval/diagnostics/hub_underflow.md
"""
import math
import time
from pathlib import Path

import numpy as np
import torch

from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.envs import make_env
from rlzoo_transfer.games import action_meanings
from rlzoo_transfer.provenance import git_commit, versions
from rlzoo_transfer.rl.policies import DERNetwork
from rlzoo_transfer.zoo import load_zoo

GAMES, SOURCES = ("Alien", "Gopher", "Jamesbond"), ("Seaquest", "Riverraid")


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


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for game in GAMES:
        x, n = frames(game), len(action_meanings(game))
        sds = load_zoo(list(SOURCES), DERNetwork(n), action_meanings(game), n_atoms=51)
        for source, sd in zip(SOURCES, sds):
            net = DERNetwork(n)   # DER's defaults: 51 atoms, hidden 256, sigma0 0.1
            net.load_state_dict(sd)
            with torch.no_grad():
                log_p = net.eval()(x)
            below = (log_p < math.log(1e-8)).float().mean().item()
            rows.append(f"| {game} | {source} | {len(x)} | {100 * below:.1f} % | {log_p.min().item():.1f} |")
    text = "\n".join([
        "# Source probabilities below 1e-8 on target frames", "",
        f"`.venv/bin/python eval/diagnostics/hub_underflow.py`, commit {git_commit()}, {time.strftime('%Y-%m-%d')}, "
        f"versions {versions()}.", "",
        "Share of the sources' (action, atom) probabilities below 1e-8 (no gradient through `log(clamp(p, 1e-8))`, "
        "the hub's log before `log_space`), on frames of random play of each target game; smallest log p.", "",
        "| game | source | frames | p < 1e-8 | min log p |", "|---|---|---|---|---|", *rows, ""])
    write_atomic(Path(__file__).with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
