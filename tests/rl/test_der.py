"""DER on real ALE games with tiny budgets: finite losses, priorities, target syncs, NoisyNet exploration, PER
annealing, determinism on CPU, save / load."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlzoo_transfer.envs import make_env
from rlzoo_transfer.rl.der import DER

STEPS, LEARNING_STARTS, TARGET_EVERY = 300, 100, 50


def instrumented(model: DER) -> SimpleNamespace:
    """Record per-update losses and betas, target syncs (at which update), priority updates, acting forwards."""
    rec = SimpleNamespace(losses=[], betas=[], syncs=[], priorities=[], acting_noisy=[])
    train, sync, update = model.train, model.policy.sync_target, model.replay_buffer.update_priorities

    def train_and_record(gradient_steps, batch_size):
        train(gradient_steps, batch_size)
        rec.losses.append(dict(model.last_losses))
        rec.betas.append(model.beta)

    def sync_and_record():
        rec.syncs.append(model._n_updates)
        sync()

    def update_and_record(leaves, losses, **kw):
        rec.priorities.append((np.array(leaves), np.array(losses)))
        update(leaves, losses, **kw)

    model.train = train_and_record
    model.policy.sync_target = sync_and_record
    model.replay_buffer.update_priorities = update_and_record

    def uninstall():  # instance attributes shadowing methods would be pickled by model.save
        del model.train, model.policy.sync_target, model.replay_buffer.update_priorities

    rec.uninstall = uninstall
    # forwards with a batch of one are the agent acting (updates use batch_size)
    model.policy.q_net.advantage_out.register_forward_hook(
        lambda mod, inp, out: rec.acting_noisy.append(mod.noisy) if inp[0].shape[0] == 1 else None)
    return rec


def tiny_der(game: str, seed: int = 0, **kw) -> DER:
    env = make_env(game, 1, seed=seed)
    params = dict(learning_starts=LEARNING_STARTS, buffer_size=1000, batch_size=16, n_steps=5,
                  target_update_interval=TARGET_EVERY, seed=seed, device="cpu")
    params.update(kw)
    return DER("DERPolicy", env, **params)


@pytest.fixture(scope="module")
def gopher():
    model = tiny_der("Gopher")
    rec = instrumented(model)
    model.learn(STEPS)
    rec.uninstall()
    yield model, rec
    model.env.close()


def test_action_space_of_the_game(gopher):
    model, _ = gopher
    assert model.action_space.n == 8
    assert model.policy.q_net.advantage_out.out_features == 8 * 51


def test_losses_are_finite_and_one_update_per_step(gopher):
    model, rec = gopher
    assert model.num_timesteps == STEPS
    assert model._n_updates == STEPS - LEARNING_STARTS == len(rec.losses)
    for d in rec.losses:
        assert np.isfinite(d["loss"]) and np.isfinite(d["cross_entropy"])
        assert 0 < d["cross_entropy"] < 10  # a cross-entropy over 51 atoms starts near log(51) ~ 3.9
    assert set(model.last_losses) >= {"loss", "cross_entropy"}


def test_priorities_are_the_sampled_cross_entropies(gopher):
    model, rec = gopher
    buf = model.replay_buffer
    assert len(rec.priorities) == STEPS - LEARNING_STARTS
    leaves, losses = rec.priorities[-1]
    assert len(leaves) == 16 and (losses > 0).all()
    np.testing.assert_allclose(buf.tree.get(leaves), (losses + 1e-6) ** buf.alpha, rtol=1e-6)
    assert buf.max_priority == pytest.approx(max(p.max() for _, p in rec.priorities) + 1e-6)
    values = buf.tree.get(np.arange(buf.capacity))
    assert len(np.unique(values[values > 0])) > 20  # updated, no longer all equal to the initial priority


def test_target_network_synced_every_interval(gopher):
    model, rec = gopher
    n = model._n_updates
    assert rec.syncs == list(range(TARGET_EVERY, n + 1, TARGET_EVERY)) == [50, 100, 150, 200]
    # the last update was a sync: the target equals the online network now
    online, target = model.policy.q_net.state_dict(), model.policy.q_net_target.state_dict()
    for k in online:
        assert torch.equal(online[k], target[k]), k


def test_acting_uses_the_noisy_network(gopher):
    """After warm-up, actions come from the network with noise on (NoisyNet exploration), never mean weights."""
    _, rec = gopher
    assert len(rec.acting_noisy) >= STEPS - LEARNING_STARTS
    assert all(rec.acting_noisy)


def test_importance_exponent_is_annealed_to_one(gopher):
    _, rec = gopher
    betas = np.array(rec.betas)
    assert (np.diff(betas) > 0).all()
    assert betas[0] == pytest.approx(0.4 + 0.6 * (LEARNING_STARTS + 1) / STEPS, abs=1e-6)
    assert betas[-1] == pytest.approx(1.0)


def test_save_load_gives_identical_greedy_actions(gopher, tmp_path):
    model, _ = gopher
    model.save(tmp_path / "model.zip")
    loaded = DER.load(tmp_path / "model.zip", device="cpu")
    obs = model.replay_buffer.sample(64).observations.numpy()  # real game frames
    a, _ = model.predict(obs, deterministic=True)
    b, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a, b)
    model.policy.set_training_mode(False)
    loaded.policy.set_training_mode(False)
    with torch.no_grad():
        qa = model.policy.q_values(torch.as_tensor(obs))
        qb = loaded.policy.q_values(torch.as_tensor(obs))
    torch.testing.assert_close(qa, qb, rtol=0, atol=0)
    for k, v in model.policy.state_dict().items():
        assert torch.equal(v, loaded.policy.state_dict()[k]), k
    assert loaded._n_updates == model._n_updates and loaded.num_timesteps == model.num_timesteps
    assert loaded.target_update_interval == TARGET_EVERY and loaded.n_step_return == 5


def losses_of_a_run(seed: int) -> list[float]:
    model = tiny_der("Alien", seed=seed, learning_starts=60, buffer_size=500, target_update_interval=20)
    rec = instrumented(model)
    model.learn(160)
    model.env.close()
    assert model.action_space.n == 18
    return [d["loss"] for d in rec.losses]


def test_same_seed_same_losses_on_cpu():
    a, b = losses_of_a_run(3), losses_of_a_run(3)
    assert len(a) == 100
    assert a == b
    c = losses_of_a_run(4)
    assert c != a


def test_learning_starts_before_the_first_complete_window_does_not_crash():
    """With learning_starts < n_steps no n-step window is complete when updates begin: they wait for one."""
    model = tiny_der("Gopher", learning_starts=5, n_steps=20, buffer_size=200)
    model.learn(30)
    model.env.close()
    assert 0 < model._n_updates < 25
