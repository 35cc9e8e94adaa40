"""Prioritised n-step replay: the sum tree against brute force, sampling frequencies and importance weights against
theory, n-step returns by hand (life loss, game over, time limit, end_episodes), reward clipping, frame storage
(stacks rebuilt from single frames, eviction), save / load, several env streams.

Observations are synthetic: every frame carries its own frame id in its pixels, so a sampled stack can be decoded
back into the frame ids it was built from.  The fake stream numbers frames in the order the buffer writes them
(4 frames at a reset, then one per step), so frame ids here equal the buffer's own.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from scipy import stats

import rlzoo_transfer.rl.buffers as buffers
from rlzoo_transfer.rl.buffers import PrioritizedNStepReplay, SumTree

H = W = 2


def frame(fid: int, h: int = H, w: int = W) -> np.ndarray:
    """A frame that encodes its id: pixel 0 = id % 256, pixel 1 = id // 256, the rest a function of the id."""
    f = np.full(h * w, (fid * 37 + 11) % 256, dtype=np.uint8)
    f[0], f[1] = fid % 256, fid // 256
    return f.reshape(h, w)


def decode(stack) -> tuple[int, ...]:
    """(4, H, W) frames -> their frame ids (checking every pixel of every frame)."""
    stack = np.asarray(stack)
    ids = tuple(int(f.flat[0]) + 256 * int(f.flat[1]) for f in stack)
    for fid, f in zip(ids, stack):
        assert np.array_equal(f, frame(fid, *f.shape)), "a frame's pixels were mixed up"
    return ids


def make_buffer(capacity: int = 100, n_envs: int = 1, n_steps: int = 3, gamma: float = 0.5, alpha: float = 0.5,
                reward_clip: float | None = None, frame_margin: float = 0.25, seed: int = 0, hw=(H, W)):
    space = spaces.Box(0, 255, (4, *hw), np.uint8)
    return PrioritizedNStepReplay(capacity * n_envs, space, spaces.Discrete(18), n_envs=n_envs, n_steps=n_steps,
                                  gamma=gamma, alpha=alpha, reward_clip=reward_clip, frame_margin=frame_margin,
                                  seed=seed)


class Streams:
    """E fake env streams with SB3 VecEnv semantics, feeding ``buf.add`` and remembering every transition.

    The action of each transition is its unique id, so sampled transitions can be told apart.
    """

    def __init__(self, buf: PrioritizedNStepReplay, lives: int = 3):
        self.buf, self.E = buf, buf.n_envs
        self.n_frames = np.zeros(self.E, dtype=np.int64)
        self.stack = [self._reset(e) for e in range(self.E)]
        self.start_lives = lives
        self.lives = [lives] * self.E
        self.first = [True] * self.E  # next step is the first of an episode
        self.trans: list[list[dict]] = [[] for _ in range(self.E)]
        self.by_id: dict[int, dict] = {}
        self.next_id = 0

    def _reset(self, e: int) -> list[int]:
        ids = list(range(self.n_frames[e], self.n_frames[e] + 4))
        self.n_frames[e] += 4
        return ids

    def obs_array(self, stacks) -> np.ndarray:
        return np.stack([np.stack([frame(f) for f in s]) for s in stacks])

    def step(self, rewards, lives=None, dones=None, truncs=None) -> list[int]:
        E = self.E
        rewards = np.broadcast_to(np.asarray(rewards, dtype=np.float32), (E,))
        lives = list(np.broadcast_to(lives, (E,))) if lives is not None else list(self.lives)
        dones = np.broadcast_to(np.asarray(dones if dones is not None else False, dtype=bool), (E,))
        truncs = np.broadcast_to(np.asarray(truncs if truncs is not None else False, dtype=bool), (E,))
        obs = self.obs_array(self.stack)
        nexts, ids, infos = [], [], []
        for e in range(E):
            new = int(self.n_frames[e])
            self.n_frames[e] += 1
            nxt = self.stack[e][1:] + [new]
            life_lost = not self.first[e] and lives[e] < self.lives[e]
            terminal = bool(dones[e] and not truncs[e]) or life_lost
            rec = {"id": self.next_id, "env": e, "obs": tuple(self.stack[e]), "next": tuple(nxt),
                   "reward": float(rewards[e]), "terminal": terminal, "end": bool(dones[e])}
            self.trans[e].append(rec)
            self.by_id[self.next_id] = rec
            ids.append(self.next_id)
            self.next_id += 1
            nexts.append(nxt)
            info = {"lives": int(lives[e])}
            if dones[e]:
                info["TimeLimit.truncated"] = bool(truncs[e])
                info["terminal_observation"] = self.obs_array([nxt])[0]
                self.stack[e] = self._reset(e)
                self.first[e] = True
            else:
                self.stack[e] = nxt
                self.first[e] = False
            self.lives[e] = int(lives[e])
            infos.append(info)
        self.buf.add(obs, self.obs_array(nexts), np.array(ids), rewards, dones, infos)
        return ids

    def end_episodes(self) -> None:
        """The env is reset (e.g. a resumed run): the buffer cuts its streams."""
        self.buf.end_episodes()
        for e in range(self.E):
            if self.trans[e]:
                self.trans[e][-1]["end"] = True
            self.stack[e] = self._reset(e)
            self.first[e] = True

    def expected(self, clip: float | None = None) -> dict[int, dict]:
        """Brute-force n-step targets of every transition whose window is complete: id -> R, discount, boot."""
        n, g = self.buf.n_steps, self.buf.gamma
        out = {}
        for tr in self.trans:
            for i in range(len(tr)):
                R, complete = 0.0, False
                for k in range(n):
                    if i + k >= len(tr):
                        break
                    r = tr[i + k]["reward"]
                    if clip is not None:
                        r = min(max(r, -clip), clip)
                    R += g ** k * r
                    last = tr[i + k]
                    if last["terminal"] or last["end"] or k == n - 1:
                        complete = True
                        break
                if complete:
                    out[tr[i]["id"]] = {"R": R, "discount": g ** (k + 1) * (not last["terminal"]),
                                        "obs": tr[i]["obs"], "boot": last["next"]}
        return out


def sample_all(buf: PrioritizedNStepReplay, draws: int = 20, batch: int = 256, beta: float = 0.4) -> dict[int, dict]:
    """Sample until every sampleable transition shows up: id -> what the buffer returned for it."""
    seen: dict[int, dict] = {}
    for _ in range(draws):
        s = buf.sample(batch, beta=beta)
        for j in range(batch):
            tid = int(s.actions[j])
            got = {"R": float(s.returns[j]), "discount": float(s.discounts[j]),
                   "obs": decode(s.observations[j].numpy()), "boot": decode(s.next_observations[j].numpy()),
                   "leaf": int(s.indices[j])}
            if tid in seen:
                assert seen[tid] == got, "the same transition sampled twice came back different"
            seen[tid] = got
    return seen


def check_against(seen: dict[int, dict], expected: dict[int, dict]) -> None:
    assert set(seen) == set(expected)
    for tid, exp in expected.items():
        got = seen[tid]
        assert got["obs"] == exp["obs"], f"transition {tid}: observation frames"
        assert got["R"] == pytest.approx(exp["R"], rel=1e-6, abs=1e-6), f"transition {tid}: n-step return"
        assert got["discount"] == pytest.approx(exp["discount"], rel=1e-6, abs=1e-7), f"transition {tid}: discount"
        if exp["discount"] > 0:
            assert got["boot"] == exp["boot"], f"transition {tid}: bootstrap observation"


# --- the sum tree ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 5, 8, 13, 100])
def test_sumtree_total_get_find_match_brute_force(size):
    rng = np.random.default_rng(size)
    tree = SumTree(size)
    p = rng.integers(0, 5, size).astype(np.float64)  # integers: sums are exact, zeros included
    p[0] = max(p[0], 1.0)
    tree.update(np.arange(size), p)
    for step in range(3):
        assert tree.total == p.sum()
        np.testing.assert_array_equal(tree.get(np.arange(size)), p)
        internal = tree.tree[1:tree.cap]
        np.testing.assert_array_equal(internal, tree.tree[2:2 * tree.cap:2] + tree.tree[3:2 * tree.cap:2])
        cum = np.cumsum(p)
        u = np.concatenate([rng.random(500) * p.sum(), cum[:-1][p[1:] > 0], [0.0]])  # random and exact edges
        np.testing.assert_array_equal(tree.find(u), np.searchsorted(cum, u, side="right"))
        assert (p[tree.find(u)] > 0).all()
        # partial update of a few leaves
        idx = rng.choice(size, size=min(3, size), replace=False)
        p[idx] = rng.integers(0, 7, len(idx))
        p[0] = max(p[0], 1.0)
        tree.update(idx, p[idx])
        tree.update(np.array([0]), p[:1])


def test_sumtree_stratified_sampling_frequencies():
    p = np.array([0, 1, 2, 3, 4, 0, 10, 0.5, 7.5, 2], dtype=np.float64)
    tree = SumTree(len(p))
    tree.update(np.arange(len(p)), p)
    rng = np.random.default_rng(123)
    B, rounds = 32, 3000
    counts = np.zeros(len(p))
    for _ in range(rounds):
        idx = tree.sample(B, rng)
        assert (np.diff(idx) >= 0).all(), "stratified: draw k comes from the k-th slice of the total"
        np.add.at(counts, idx, 1)
    assert counts[p == 0].sum() == 0, "zero-priority leaves are never drawn"
    nz = p > 0
    expected = p[nz] / p.sum() * B * rounds
    chi2, pval = stats.chisquare(counts[nz], expected)
    assert pval > 1e-3, (counts, expected)
    np.testing.assert_allclose(counts[nz] / (B * rounds), p[nz] / p.sum(), atol=0.01)


def test_sumtree_empty_is_an_error():
    with pytest.raises(RuntimeError, match="empty"):
        SumTree(4).sample(2, np.random.default_rng(0))


def test_a_stream_smaller_than_the_nstep_window_is_refused():
    """Capacity per stream below n_steps wrapped the window onto itself: an IndexError on the n-th add."""
    with pytest.raises(ValueError, match="leaves 2 transitions per env, fewer than n_steps=3"):
        make_buffer(capacity=2, n_envs=2, n_steps=3)
    make_buffer(capacity=3, n_envs=2, n_steps=3)   # exactly one window per stream is enough


# --- prioritised sampling on the buffer -------------------------------------------------------------------------
def test_priorities_sampling_frequencies_and_importance_weights():
    alpha, beta, N = 0.5, 0.7, 24
    buf = make_buffer(capacity=64, n_steps=1, alpha=alpha, seed=5)
    s = Streams(buf)
    for _ in range(N):
        s.step(0.0)
    assert buf.size() == N
    leaves = np.arange(N)  # one stream: leaf = position = transition id
    losses = np.linspace(0.1, 4.0, N) ** 2
    buf.update_priorities(leaves, losses)
    np.testing.assert_allclose(buf.tree.get(leaves), (losses + 1e-6) ** alpha)
    P = (losses + 1e-6) ** alpha / ((losses + 1e-6) ** alpha).sum()

    counts = np.zeros(N)
    B = 32
    for _ in range(1500):
        batch = buf.sample(B, beta=beta)
        ids = batch.actions.numpy()
        np.testing.assert_array_equal(ids, batch.indices)  # transition id == leaf here
        np.add.at(counts, ids, 1)
        w = (N * P[ids]) ** -beta
        np.testing.assert_allclose(batch.weights.numpy(), w / w.max(), rtol=1e-5)
        assert batch.weights.dtype == torch.float32 and batch.weights.max() == 1.0
    _, pval = stats.chisquare(counts, P * counts.sum())
    assert pval > 1e-3
    np.testing.assert_allclose(counts / counts.sum(), P, atol=0.01)

    # a new transition enters with the largest priority seen so far
    s.step(0.0)
    assert buf.max_priority == pytest.approx(losses.max() + 1e-6)
    assert buf.tree.get(np.array([N]))[0] == pytest.approx((losses.max() + 1e-6) ** alpha)


# --- n-step returns ---------------------------------------------------------------------------------------------
def test_nstep_returns_by_hand_life_loss_and_game_over():
    buf = make_buffer(n_steps=3, gamma=0.5)
    s = Streams(buf, lives=3)
    #            reward lives  done
    script = [(1, 3, False), (2, 3, False), (4, 2, False),  # t2 loses a life: terminal for learning
              (8, 2, False), (16, 2, False), (32, 2, False), (64, 2, False),
              (1, 3, True),  # t7 game over (ALE reports the new game's lives on that step)
              (1, 3, False), (1, 3, False)]
    ids = [s.step(r, lives=lv, dones=d)[0] for r, lv, d in script]
    seen = sample_all(buf)
    # t8, t9 (new episode) have open windows: never sampled
    assert set(seen) == set(ids[:8])
    hand = {0: (1 + 1 + 1, 0.0), 1: (2 + 2, 0.0), 2: (4, 0.0),
            3: (8 + 8 + 8, 0.125), 4: (16 + 16 + 16, 0.125),
            5: (32 + 32 + 0.25, 0.0), 6: (64 + 0.5, 0.0), 7: (1, 0.0)}
    for i, (R, disc) in hand.items():
        assert seen[ids[i]]["R"] == pytest.approx(R) and seen[ids[i]]["discount"] == disc, i
    # bootstrap observations: the next obs of the window's last step
    assert seen[ids[3]]["boot"] == s.by_id[ids[5]]["next"]
    assert seen[ids[4]]["boot"] == s.by_id[ids[6]]["next"]
    # observations are rebuilt from single frames: the reset stack (4 fresh frames) and the ones after it
    assert seen[ids[0]]["obs"] == (0, 1, 2, 3)
    assert seen[ids[1]]["obs"] == (1, 2, 3, 4)
    assert seen[ids[7]]["obs"] == s.by_id[ids[7]]["obs"]

    s.step(1, lives=3)  # t10 completes t8's window: the first obs of the new game comes back intact
    seen = sample_all(buf)
    assert set(seen) == set(ids[:9])
    first = s.by_id[ids[8]]
    assert seen[ids[8]]["obs"] == first["obs"] == (s.by_id[ids[7]]["next"][-1] + 1,) + tuple(
        range(s.by_id[ids[7]]["next"][-1] + 2, s.by_id[ids[7]]["next"][-1] + 5))
    assert seen[ids[8]]["R"] == pytest.approx(1.75) and seen[ids[8]]["discount"] == pytest.approx(0.125)
    check_against(seen, s.expected())


def test_nstep_time_limit_truncation_bootstraps_from_the_final_observation():
    buf = make_buffer(n_steps=3, gamma=0.5)
    s = Streams(buf)
    ids = [s.step(1.0)[0], s.step(2.0)[0], s.step(4.0, dones=True, truncs=True)[0]]
    terminal_obs = s.by_id[ids[2]]["next"]
    seen = sample_all(buf)
    assert set(seen) == set(ids)
    for tid, R, disc in [(ids[0], 1 + 1 + 1, 0.125), (ids[1], 2 + 2, 0.25), (ids[2], 4, 0.5)]:
        assert seen[tid]["R"] == pytest.approx(R)
        assert seen[tid]["discount"] == pytest.approx(disc), "a time limit is no terminal: bootstrap gamma^L"
        assert seen[tid]["boot"] == terminal_obs
    # the same step as a game over: no bootstrap
    buf2 = make_buffer(n_steps=3, gamma=0.5)
    s2 = Streams(buf2)
    for r, d in [(1.0, False), (2.0, False), (4.0, True)]:
        s2.step(r, dones=d)
    assert {v["discount"] for v in sample_all(buf2).values()} == {0.0}


def test_end_episodes_cuts_open_windows_and_restarts_the_frames():
    buf = make_buffer(n_steps=3, gamma=0.5)
    s = Streams(buf)
    a, b = s.step(1.0)[0], s.step(2.0)[0]
    assert buf.size() == 0, "windows still open: nothing can be sampled yet"
    with pytest.raises(RuntimeError):
        buf.sample(4)
    last_next = s.by_id[b]["next"]
    s.end_episodes()
    seen = sample_all(buf)
    assert set(seen) == {a, b}
    assert seen[a]["R"] == pytest.approx(1 + 1) and seen[a]["discount"] == pytest.approx(0.25)
    assert seen[b]["R"] == pytest.approx(2) and seen[b]["discount"] == pytest.approx(0.5)
    assert seen[a]["boot"] == seen[b]["boot"] == last_next
    # after the cut the stream starts afresh from the obs given (4 new frames), not from the old stack
    c = s.step(8.0)[0]
    s.step(0.0), s.step(0.0)
    seen = sample_all(buf)
    assert seen[c]["obs"] == s.by_id[c]["obs"] == tuple(range(last_next[-1] + 1, last_next[-1] + 5))
    assert seen[c]["R"] == pytest.approx(8.0)
    check_against(seen, s.expected())


def test_rewards_are_clipped_for_learning():
    buf = make_buffer(n_steps=3, gamma=0.5, reward_clip=1.0)
    s = Streams(buf)
    ids = [s.step(r)[0] for r in (5.0, -3.0, 0.25, 10.0, -0.5)]
    seen = sample_all(buf)
    assert seen[ids[0]]["R"] == pytest.approx(1 - 0.5 + 0.0625)
    assert seen[ids[1]]["R"] == pytest.approx(-1 + 0.125 + 0.25)
    assert seen[ids[2]]["R"] == pytest.approx(0.25 + 0.5 - 0.125)
    check_against(seen, s.expected(clip=1.0))
    unclipped = make_buffer(n_steps=3, gamma=0.5, reward_clip=None)
    s2 = Streams(unclipped)
    for r in (5.0, -3.0, 0.25):
        s2.step(r)
    assert sample_all(unclipped, draws=2)[0]["R"] == pytest.approx(5 - 1.5 + 0.0625)


# --- frames, eviction, several streams ---------------------------------------------------------------------------
def random_script(s: Streams, steps: int, rng: np.random.Generator, p_over=0.05, p_trunc=0.02, p_life=0.06):
    E = s.E
    for _ in range(steps):
        rewards = rng.choice([-3.0, -1.0, 0.0, 0.0, 0.5, 1.0, 2.0, 7.0], size=E)
        lives = list(s.lives)
        dones = rng.random(E) < p_over + p_trunc
        truncs = dones & (rng.random(E) < p_trunc / (p_over + p_trunc))
        for e in range(E):
            if dones[e]:
                lives[e] = s.start_lives
            elif not s.first[e] and lives[e] > 1 and rng.random() < p_life:
                lives[e] -= 1
        s.step(rewards, lives=lives, dones=dones, truncs=truncs)


def test_several_streams_random_episodes_match_brute_force():
    buf = make_buffer(capacity=400, n_envs=3, n_steps=4, gamma=0.9, reward_clip=1.0, seed=1)
    s = Streams(buf)
    random_script(s, 150, np.random.default_rng(0))
    exp = s.expected(clip=1.0)
    assert buf.size() == len(exp)
    seen = sample_all(buf, draws=40)
    check_against(seen, exp)
    # each stream's transitions live in its own leaf range
    for tid, got in seen.items():
        assert got["leaf"] // buf.capacity == s.by_id[tid]["env"]
    # there were life losses, game overs and time limits in the script
    recs = [r for tr in s.trans for r in tr]
    assert any(r["terminal"] and not r["end"] for r in recs)
    assert any(r["end"] and r["terminal"] for r in recs) and any(r["end"] and not r["terminal"] for r in recs)


def test_frame_eviction_and_ring_overwrite():
    """Short episodes use 4 reset frames each: with no frame margin, old transitions lose their frames before the
    transition ring wraps; those must leave the tree, and everything sampled must still decode correctly."""
    capacity, n = 40, 3
    buf = make_buffer(capacity=capacity, n_envs=2, n_steps=n, gamma=0.9, frame_margin=0.0, seed=2)
    s = Streams(buf)
    rng = np.random.default_rng(3)
    random_script(s, 300, rng, p_over=0.3, p_trunc=0.05, p_life=0.1)
    exp = s.expected()
    live = {}
    for e in range(2):
        tr = s.trans[e]
        frames_written = int(s.n_frames[e])
        if s.first[e]:  # the reset frames of the current episode are not in the buffer yet
            frames_written -= 4
        for k, rec in enumerate(tr):
            in_ring = k >= len(tr) - capacity
            frames_kept = rec["obs"][0] >= frames_written - buf.frame_cap
            if rec["id"] in exp and in_ring and frames_kept:
                live[rec["id"]] = exp[rec["id"]]
    assert len(live) < capacity * 2 - 2 * n, "the script should make frame eviction matter"
    assert buf.size() == len(live)
    check_against(sample_all(buf, draws=40), live)


def test_full_size_observations_roundtrip():
    buf = make_buffer(capacity=50, n_envs=2, n_steps=2, gamma=0.9, hw=(84, 84))
    rng = np.random.default_rng(0)
    given: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    obs = rng.integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    tid = 0
    for step in range(12):
        new = rng.integers(0, 256, (2, 1, 84, 84), dtype=np.uint8)
        next_obs = np.concatenate([obs[:, 1:], new], axis=1)
        done = np.array([step == 5, False])
        infos = [{"lives": 3}, {"lives": 3}]
        ids = np.array([tid, tid + 1])
        buf.add(obs, next_obs, ids, np.zeros(2), done, infos)
        given[tid], given[tid + 1] = (obs[0].copy(), next_obs[0].copy()), (obs[1].copy(), next_obs[1].copy())
        tid += 2
        obs = next_obs.copy()
        if done[0]:
            obs[0] = rng.integers(0, 256, (4, 84, 84), dtype=np.uint8)  # a fresh, unrelated reset stack
    batch = buf.sample(64)
    assert batch.observations.shape == (64, 4, 84, 84) and batch.observations.dtype == torch.uint8
    assert batch.next_observations.shape == (64, 4, 84, 84)
    # laid out channels-last, the layout DER's convolutions take (values checked below, element by element)
    for x in (batch.observations, batch.next_observations):
        assert x.is_contiguous(memory_format=torch.channels_last)
    seen = set()
    for _ in range(5):
        batch = buf.sample(64)
        for j in range(64):
            t = int(batch.actions[j])
            seen.add(t)
            np.testing.assert_array_equal(batch.observations[j].numpy(), given[t][0])
            if batch.discounts[j] == pytest.approx(0.81):  # n = 2, no terminal: next obs of the second step
                np.testing.assert_array_equal(batch.next_observations[j].numpy(), given[t + 2][1])
            elif t == 10:  # env 0's game over at step 5: no bootstrap
                assert batch.discounts[j] == 0
            elif t == 8:  # one step before the game over: R = r, discount 0
                assert batch.discounts[j] == 0
    # env 0's last obs before the game over, and its first obs after it (an unrelated reset stack)
    assert {8, 10, 12} <= seen
    assert len(seen) == 22  # 24 transitions, the last of each stream has an open window


def test_save_load_roundtrip(tmp_path):
    buf = make_buffer(capacity=60, n_envs=2, n_steps=3, gamma=0.9, seed=7)
    s = Streams(buf)
    random_script(s, 80, np.random.default_rng(4))
    buf.update_priorities(np.array([1, 2, 61]), np.array([3.0, 0.5, 2.0]))
    path = str(tmp_path / "replay.npz")
    buf.save(path)
    copy = make_buffer(capacity=60, n_envs=2, n_steps=3, gamma=0.9, seed=999)
    copy.load(path)
    assert copy.max_priority == buf.max_priority and copy.size() == buf.size()
    for k in buf._ARRAYS:
        np.testing.assert_array_equal(getattr(copy, k), getattr(buf, k), err_msg=k)
    assert copy.pending == buf.pending
    for _ in range(3):  # the sampling rng travels with the buffer
        a, b = buf.sample(32, beta=0.5), copy.sample(32, beta=0.5)
        np.testing.assert_array_equal(a.indices, b.indices)
        for x, y in zip(a[:-1], b[:-1]):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    # open windows (pending) survive too: the same further steps complete the same transitions
    s2 = Streams(copy)
    s2.n_frames, s2.stack, s2.lives, s2.first = s.n_frames.copy(), [list(x) for x in s.stack], list(s.lives), \
        list(s.first)
    s2.next_id = s.next_id
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    random_script(s, 10, rng_a)
    random_script(s2, 10, rng_b)
    np.testing.assert_array_equal(buf.tree.tree, copy.tree.tree)
    a, b = buf.sample(32), copy.sample(32)
    np.testing.assert_array_equal(a.indices, b.indices)
    torch.testing.assert_close(a.returns, b.returns)


def test_load_streams_in_small_chunks(tmp_path, monkeypatch):
    """Arrays are read into the buffer in bounded chunks (a 1M buffer must not need a second copy in memory)."""
    buf = make_buffer(capacity=60, n_envs=2, n_steps=3, gamma=0.9, seed=7)
    random_script(Streams(buf), 80, np.random.default_rng(5))
    buf.save(str(tmp_path / "r.npz"))
    monkeypatch.setattr(buffers, "_READ_CHUNK", 7)  # not a divisor of any array's size
    copy = make_buffer(capacity=60, n_envs=2, n_steps=3, gamma=0.9, seed=1)
    copy.load(str(tmp_path / "r.npz"))
    for k in buf._ARRAYS:
        np.testing.assert_array_equal(getattr(copy, k), getattr(buf, k), err_msg=k)


def test_load_rejects_a_buffer_of_another_size(tmp_path):
    buf = make_buffer(capacity=60)
    Streams(buf).step(1.0)
    buf.save(str(tmp_path / "r.npz"))
    with pytest.raises(ValueError, match="buffer_size"):
        make_buffer(capacity=30).load(str(tmp_path / "r.npz"))
