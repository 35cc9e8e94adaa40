"""Evaluation under the Atari 100k protocol: whole games, unclipped returns, epsilon 0.001, noise off.

Episodes run in parallel envs; env i plays exactly its quota of episodes (the n episodes are split evenly over the
envs), so short episodes are not over-represented the way "the first n episodes to finish" would.  Each evaluation
is seeded from (seed, step), so a resumed run evaluates exactly like an uninterrupted one.
"""
from __future__ import annotations

import numpy as np
import torch

from rlzoo_transfer.envs import make_env


def evaluate(policy, game: str, n_episodes: int, seed: int, epsilon: float = 0.001,
             max_envs: int = 8) -> list[float]:
    """Returns of ``n_episodes`` evaluation episodes of ``policy`` (a DERPolicy) on ``game``.

    The policy is put in eval mode (mean weights) for the duration and restored afterwards.
    """
    n_envs = max(1, min(n_episodes, max_envs))
    quota = np.full(n_envs, n_episodes // n_envs)
    quota[: n_episodes % n_envs] += 1
    rng = np.random.default_rng(seed)
    env = make_env(game, n_envs, seed=int(rng.integers(2**31 - 1)))
    was_training = policy.training
    policy.set_training_mode(False)
    returns: list[float] = []
    done_count = np.zeros(n_envs, dtype=np.int64)
    try:
        obs = env.reset()
        n_actions = env.action_space.n
        while (done_count < quota).any():
            with torch.no_grad():
                actions = policy.q_values(torch.as_tensor(obs, device=policy.device)).argmax(1).cpu().numpy()
            explore = rng.random(n_envs) < epsilon
            actions = np.where(explore, rng.integers(n_actions, size=n_envs), actions)
            obs, _, dones, infos = env.step(actions)
            for i in np.flatnonzero(dones):
                if done_count[i] < quota[i]:
                    returns.append(infos[i]["episode"]["r"])
                done_count[i] += 1
    finally:
        env.close()
        policy.set_training_mode(was_training)
    return returns
