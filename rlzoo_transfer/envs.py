"""Atari 100k environments (REFERENCE.md "Atari 100k protocol") as SB3 vector environments.

Both train and eval envs are ``ale_py.vector_env.AtariVectorEnv`` (C++ preprocessing in threads): frame skip 4 with
max-pool over the last two frames, 84x84 grayscale, stack of 4, minimal action set, no sticky actions, up to 30
no-op starts, episodes capped at 108k frames (27k agent steps), ``use_fire_reset=False`` (the protocol does not
press FIRE for the agent).  The env always runs whole games and returns raw rewards; the learning signals of the
protocol are derived by the learner (``rl/buffers.py``):

- a life loss is terminal for learning only: ``info["lives"]`` tells the buffer when a life was lost;
- rewards are clipped to [-1, 1] for learning only.

So one env class serves training (returns logged unclipped, as the papers do) and evaluation.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvStepReturn

from rlzoo_transfer.games import FRAMES_PER_EPISODE, resolve_game


class AtariVecEnv(VecEnv):
    """SB3 ``VecEnv`` over ale_py's native vector env, Atari 100k preprocessing, whole games, raw rewards.

    Observations: ``(n_envs, 4, 84, 84)`` uint8.  ``step`` auto-resets finished games (SB3 semantics): the game's
    last observation is in ``infos[i]["terminal_observation"]``; ``infos[i]["lives"]`` is the life counter after
    the step; ``infos[i]["episode"] = {"r", "l", "t"}`` at game over (like SB3's Monitor); a game cut at 27k agent
    steps sets ``infos[i]["TimeLimit.truncated"] = True``.

    :param game: any name ``resolve_game`` accepts
    :param n_envs: number of games run in parallel (C++ threads)
    :param noop_max: up to this many no-ops at the start of each game (30 in the protocol)
    :param num_threads: ALE worker threads (0 = one per env, capped by ale-py)
    """

    def __init__(self, game: str, n_envs: int = 1, noop_max: int = 30, num_threads: int = 0):
        from ale_py.vector_env import AtariVectorEnv

        self.game, self.rom_id = resolve_game(game)
        self._env = AtariVectorEnv(
            self.rom_id, n_envs, num_threads=num_threads or min(n_envs, max(1, (os.cpu_count() or 2) // 2)),
            max_num_frames_per_episode=FRAMES_PER_EPISODE, repeat_action_probability=0.0,
            autoreset_mode="SameStep", frameskip=4, maxpool=True, stack_num=4, img_height=84, img_width=84,
            grayscale=True, noop_max=noop_max, episodic_life=False, reward_clipping=False, use_fire_reset=False,
        )
        self.render_mode = None
        super().__init__(n_envs, self._env.single_observation_space, self._env.single_action_space)
        self._actions: np.ndarray | None = None
        self._ep_return = np.zeros(n_envs, dtype=np.float64)
        self._ep_len = np.zeros(n_envs, dtype=np.int64)
        self._t0 = time.time()
        self.lives = np.zeros(n_envs, dtype=np.int64)

    # --- VecEnv API -------------------------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        seeds = self._seeds
        if seeds and seeds[0] is not None:
            obs, info = self._env.reset(seed=np.asarray(seeds, dtype=np.int64))
        else:
            obs, info = self._env.reset()
        self._reset_seeds()
        self._ep_return[:] = 0.0
        self._ep_len[:] = 0
        self.lives = np.asarray(info["lives"], dtype=np.int64).copy()
        self.reset_infos = [{"lives": int(x)} for x in self.lives]
        return obs.copy()

    def step_async(self, actions: np.ndarray) -> None:
        """Start the step in ale-py's threads and return (several envs then step concurrently)."""
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        self._env.send(self._actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rew, term, trunc, info = self._env.recv()
        rew = np.asarray(rew, dtype=np.float32)
        dones = np.logical_or(term, trunc)
        self._ep_return += rew
        self._ep_len += 1
        lives = np.asarray(info["lives"], dtype=np.int64)
        infos: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            d: dict[str, Any] = {"lives": int(lives[i])}
            if dones[i]:
                d["terminal_observation"] = np.array(info["final_obs"][i])
                d["TimeLimit.truncated"] = bool(trunc[i] and not term[i])
                d["episode"] = {"r": float(self._ep_return[i]), "l": int(self._ep_len[i]),
                                "t": round(time.time() - self._t0, 6)}
                self._ep_return[i] = 0.0
                self._ep_len[i] = 0
            infos.append(d)
        self.lives = lives.copy()
        return obs.copy(), rew, dones, infos

    def close(self) -> None:
        self._env.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        return [getattr(self, method_name)(*args, **kwargs)] * len(self._get_indices(indices))

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._get_indices(indices))

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs


def make_env(game: str, n_envs: int = 1, seed: int | None = None) -> AtariVecEnv:
    """A seeded Atari 100k vector env (train or eval: the protocol differs only in what the learner does)."""
    env = AtariVecEnv(game, n_envs)
    if seed is not None:
        env.seed(seed)
    return env
