"""Evaluation under the Atari 100k protocol: whole games, unclipped returns, epsilon 0.001, noise off.

Episodes run in parallel envs; env i plays exactly its quota of episodes (the n episodes are split evenly over the
envs), so short episodes are not over-represented the way "the first n episodes to finish" would.  Each evaluation
is seeded from (seed, step), so a resumed run evaluates exactly like an uninterrupted one.  A stop request
(SIGINT / SIGTERM, :mod:`rlzoo_transfer.stop`) abandons an evaluation at its next step: the caller checkpoints
before it, and the resumed run evaluates that step again from the start (the same seed, so the same games).
"""
from __future__ import annotations

import numpy as np
import torch

from rlzoo_transfer.envs import make_env


class EvaluationStopped(Exception):
    """A stop request came during an evaluation, which was abandoned: its returns so far are dropped."""


def epsilon_greedy(policy, obs: np.ndarray, epsilon: float, rng: np.random.Generator, n_actions: int) -> np.ndarray:
    """Actions of the protocol's evaluation policy: ``argmax_a Q(s, a)`` of ``policy`` per env, each replaced by a
    uniform random action with probability ``epsilon``.

    :param obs: ``(n_envs, 4, 84, 84)`` uint8 frame stacks
    :return: ``(n_envs,)`` int actions; always draws ``n_envs`` uniforms and ``n_envs`` random actions from ``rng``
    """
    with torch.no_grad():
        greedy = policy.q_values(torch.as_tensor(obs, device=policy.device)).argmax(1).cpu().numpy()
    explore = rng.random(len(obs)) < epsilon
    return np.where(explore, rng.integers(n_actions, size=len(obs)), greedy)


def evaluate(policy, game: str, n_episodes: int, seed: int, epsilon: float = 0.001,
             max_envs: int = 8, stop=None) -> list[float]:
    """Returns of ``n_episodes`` evaluation episodes of ``policy`` (a DERPolicy) on ``game``.

    The policy is put in eval mode (mean weights) for the duration and restored afterwards.

    :param stop: a ``stop.StopRequest`` (or None): once it is set, the next step raises ``EvaluationStopped``
        instead of playing on (a 100-game evaluation of a good policy takes minutes on these CPUs)
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
            if stop:
                raise EvaluationStopped(f"evaluation stopped by {getattr(stop, 'signal', None) or 'a stop request'}")
            obs, _, dones, infos = env.step(epsilon_greedy(policy, obs, epsilon, rng, n_actions))
            for i in np.flatnonzero(dones):
                if done_count[i] < quota[i]:
                    returns.append(infos[i]["episode"]["r"])
                done_count[i] += 1
    finally:
        env.close()
        policy.set_training_mode(was_training)
    return returns
