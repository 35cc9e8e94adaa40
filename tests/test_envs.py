"""Atari 100k environments: game names, action sets, observations, raw rewards, lives, game over, time limit,
seeding."""
from __future__ import annotations

import numpy as np
import pytest

from rlzoo_transfer import envs
from rlzoo_transfer.envs import AtariVecEnv, make_env
from rlzoo_transfer.games import UnknownGameError, action_meanings, resolve_game


@pytest.mark.parametrize("name,canonical,rom", [
    ("Jamesbond", "Jamesbond", "jamesbond"), ("JamesBond", "Jamesbond", "jamesbond"),
    ("jamesbond", "Jamesbond", "jamesbond"), ("MsPacman", "MsPacman", "ms_pacman"),
    ("ms_pacman", "MsPacman", "ms_pacman"), ("Alien", "Alien", "alien"), ("alien", "Alien", "alien"),
    (" Gopher ", "Gopher", "gopher"), ("ALE/Pong-v5", "Pong", "pong"), ("Riverraid", "Riverraid", "riverraid"),
    ("Seaquest", "Seaquest", "seaquest"),
])
def test_resolve_game_spellings(name, canonical, rom):
    assert resolve_game(name) == (canonical, rom)


def test_unknown_game_lists_valid_names_and_close_matches():
    with pytest.raises(UnknownGameError) as err:
        resolve_game("Alein")
    msg = str(err.value)
    assert "'Alein'" in msg and "Did you mean Alien" in msg
    assert "Valid games:" in msg and all(g in msg for g in ("Alien", "Gopher", "Jamesbond", "Pong", "MsPacman"))
    assert "\n" not in msg
    with pytest.raises(ValueError, match="unknown game 'NoSuchGame'"):  # UnknownGameError is a ValueError
        resolve_game("NoSuchGame")


def test_action_meanings_minimal_action_sets():
    gopher = action_meanings("Gopher")
    assert len(gopher) == 8 and gopher[0] == "NOOP" and "FIRE" in gopher
    alien = action_meanings("alien")
    assert len(alien) == 18 and alien[:3] == ["NOOP", "FIRE", "UP"]
    assert len(action_meanings("Pong", full_action_space=True)) == 18 > len(action_meanings("Pong"))


@pytest.fixture(scope="module")
def played():
    """Two Jamesbond games under random play until each env has finished one game (~500 steps)."""
    env = make_env("Jamesbond", 2, seed=3)
    rng = np.random.default_rng(0)
    obs = env.reset()
    log = {"first_obs": obs, "reset_lives": list(env.lives), "rewards": [], "lives": [], "dones": [],
           "infos": [], "obs": []}
    ended = np.zeros(2, dtype=bool)
    for _ in range(3000):
        obs, rew, dones, infos = env.step(rng.integers(env.action_space.n, size=2))
        log["rewards"].append(rew)
        log["dones"].append(dones)
        log["infos"].append(infos)
        log["obs"].append(obs)
        ended |= dones
        if ended.all():
            break
    env.close()
    assert ended.all(), "random Jamesbond games end within a few hundred steps"
    return SimpleLog(log)


class SimpleLog(dict):
    __getattr__ = dict.__getitem__


def test_observations_are_stacked_84x84_uint8(played):
    obs = played.first_obs
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert played.obs[-1].shape == (2, 4, 84, 84)
    # the stack slides by one frame per step
    np.testing.assert_array_equal(played.obs[10][:, :3], played.obs[9][:, 1:])
    assert played.obs[10].std() > 0  # a real game picture, not a blank frame


def test_rewards_are_raw_and_episode_info_sums_them(played):
    rewards = np.array(played.rewards)
    dones = np.array(played.dones)
    assert rewards.dtype == np.float32
    assert rewards.max() > 1, "Jamesbond scores 50 / 100 points per hit: rewards are not clipped"
    for e in range(2):
        t_end = int(np.flatnonzero(dones[:, e])[0])
        ep = played.infos[t_end][e]["episode"]
        assert ep["l"] == t_end + 1
        assert ep["r"] == pytest.approx(rewards[: t_end + 1, e].sum())
        assert "t" in ep


def test_lives_in_infos_and_game_over(played):
    dones = np.array(played.dones)
    assert played.reset_lives == [6, 6]
    for e in range(2):
        t_end = int(np.flatnonzero(dones[:, e])[0])
        lives = [played.infos[t][e]["lives"] for t in range(t_end)]
        assert lives[0] == 6 and min(lives) < 6, "lives are lost before the game is over"
        assert all(b <= a for a, b in zip(lives, lives[1:])), "lives only go down within one game"
        info = played.infos[t_end][e]
        assert info["TimeLimit.truncated"] is False
        term = info["terminal_observation"]
        assert term.shape == (4, 84, 84) and term.dtype == np.uint8
        # SB3 auto-reset: the step returns the new game's first observation, the old game's last one is in infos
        assert not np.array_equal(term, played.obs[t_end][e])
        np.testing.assert_array_equal(term[:3], played.obs[t_end - 1][e][1:])
        # steps without a game over carry no episode keys
        assert "episode" not in played.infos[t_end - 1][e] and "terminal_observation" not in played.infos[0][e]


def test_time_limit_truncation(monkeypatch):
    monkeypatch.setattr(envs, "FRAMES_PER_EPISODE", 200)  # 50 agent steps instead of 27k
    env = AtariVecEnv("Breakout", 1, noop_max=0)  # Breakout never starts without FIRE: NOOP runs into the limit
    env.seed(0)
    env.reset()
    for k in range(1, 60):
        _, _, dones, infos = env.step(np.zeros(1, dtype=np.int64))
        if dones[0]:
            break
    env.close()
    assert k == 50
    assert infos[0]["TimeLimit.truncated"] is True
    assert infos[0]["episode"]["l"] == 50 and "terminal_observation" in infos[0]


def test_seeding_makes_games_reproducible():
    def trajectory(seed):
        env = make_env("Alien", 1, seed=seed)
        frames = [env.reset()]
        for a in [0, 3, 3, 4, 2, 5, 1, 1] * 5:
            frames.append(env.step(np.array([a]))[0])
        env.close()
        return np.stack(frames)

    a, b = trajectory(7), trajectory(7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, trajectory(8)), "another seed, other no-op starts"


def test_vector_env_spaces():
    env = make_env("Gopher", 3)
    try:
        assert env.num_envs == 3 and env.action_space.n == 8 and env.observation_space.shape == (4, 84, 84)
        assert env.observation_space.dtype == np.uint8
        assert (env.game, env.rom_id) == ("Gopher", "gopher")
        assert env.reset().shape == (3, 4, 84, 84)
    finally:
        env.close()
