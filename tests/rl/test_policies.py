"""DERNetwork and DERPolicy: shapes for 8- and 18-action games, normalised log-probabilities, the dueling head,
Q = sum_k z_k p_k, greedy predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlzoo_transfer.layers.noisy import NoisyLinear
from rlzoo_transfer.rl.policies import DERNetwork, DERPolicy, build_der_network

OBS = spaces.Box(0, 255, (4, 84, 84), np.uint8)


def policy(n_actions: int, seed: int = 0) -> DERPolicy:
    torch.manual_seed(seed)
    return DERPolicy(OBS, spaces.Discrete(n_actions), lambda _: 1e-4)


@pytest.mark.parametrize("n_actions", [8, 18])
def test_network_shapes_and_normalised_log_probs(n_actions):
    torch.manual_seed(0)
    net = DERNetwork(n_actions)
    x = torch.rand(5, 4, 84, 84)
    assert net.features(x).shape == (5, DERNetwork.feature_dim) == (5, 576)
    for mode in (True, False):
        net.train(mode)
        lp = net(x)
        assert lp.shape == (5, n_actions, 51)
        assert (lp <= 0).all()
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(5, n_actions))
    # DER's layer sizes (REFERENCE.md): conv 4->32 5x5/5, 32->64 5x5/5, noisy 576->256->51 and 576->256->A*51
    assert net.conv1.weight.shape == (32, 4, 5, 5) and net.conv1.stride == (5, 5)
    assert net.conv2.weight.shape == (64, 32, 5, 5) and net.conv2.stride == (5, 5)
    assert isinstance(net.value_hidden, NoisyLinear) and net.value_hidden.weight_mu.shape == (256, 576)
    assert net.value_out.weight_mu.shape == (51, 256)
    assert net.advantage_hidden.weight_mu.shape == (256, 576)
    assert net.advantage_out.weight_mu.shape == (n_actions * 51, 256)
    assert net.value_hidden.sigma0 == 0.1


def test_dueling_head_mean_advantage_is_the_value_stream():
    torch.manual_seed(1)
    net = DERNetwork(6).eval()
    f = torch.rand(3, 576)
    logits = net.head(f)
    v = net.value_out(torch.relu(net.value_hidden(f)))
    torch.testing.assert_close(logits.mean(1), v)  # v + a - mean_a(a), averaged over actions, is v
    assert not torch.allclose(logits[:, 0], logits[:, 1])  # the advantage stream does tell actions apart


def test_build_der_network_follows_the_observation_space():
    net = build_der_network(spaces.Box(0, 255, (4, 84, 84), np.uint8), 9, n_atoms=21, hidden=64)
    out = net(torch.rand(2, 4, 84, 84))
    assert out.shape == (2, 9, 21) and net.value_hidden.out_features == 64


@pytest.mark.parametrize("n_actions", [8, 18])
def test_policy_predict_and_q_values(n_actions):
    pol = policy(n_actions)
    torch.testing.assert_close(pol.support, torch.linspace(-10, 10, 51))
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (4, 84, 84), dtype=np.uint8)
    action, _ = pol.predict(obs, deterministic=True)
    assert np.shape(action) == () and 0 <= int(action) < n_actions
    batch = rng.integers(0, 256, (7, 4, 84, 84), dtype=np.uint8)
    actions, _ = pol.predict(batch, deterministic=True)
    assert actions.shape == (7,) and ((0 <= actions) & (actions < n_actions)).all()

    # q = sum_k z_k p_k over the mean-weight network (predict is in eval mode), and actions are its argmax
    pol.set_training_mode(False)
    x = torch.as_tensor(batch)
    with torch.no_grad():
        q = pol.q_values(x)
        probs = pol.q_net(x.float() / 255).exp()
    assert q.shape == (7, n_actions)
    torch.testing.assert_close(q, (probs * torch.linspace(-10, 10, 51)).sum(-1))
    np.testing.assert_array_equal(actions, q.argmax(1).numpy())
    # evaluation is deterministic: new noise samples do not change greedy actions
    pol.reset_noise()
    np.testing.assert_array_equal(pol.predict(batch, deterministic=True)[0], actions)


def test_training_mode_q_values_are_noisy_and_target_starts_equal():
    pol = policy(8)
    x = torch.as_tensor(np.random.default_rng(1).integers(0, 256, (4, 4, 84, 84), dtype=np.uint8))
    pol.set_training_mode(True)
    with torch.no_grad():
        q1 = pol.q_values(x)
        pol.reset_noise()
        q2 = pol.q_values(x)
    assert not torch.allclose(q1, q2)
    # the target network is a separate copy; sync_target makes it equal to the online one
    with torch.no_grad():
        pol.q_net.conv1.weight.add_(1.0)
    assert not torch.equal(pol.q_net.conv1.weight, pol.q_net_target.conv1.weight)
    assert not any(p.requires_grad for p in pol.q_net_target.parameters())
    pol.sync_target()
    for (k, a), b in zip(pol.q_net.state_dict().items(), pol.q_net_target.state_dict().values()):
        assert torch.equal(a, b), k
    assert pol.auxiliary_loss(None) == {} and pol.statistics() == {}


def test_scale_is_exact_and_channels_last():
    """uint8 -> [0, 1] floats, values unchanged; a 4-D batch comes out channels-last (no per-forward re-layout)."""
    obs = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    x = DERPolicy.scale(obs)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, obs.float() / 255.0, rtol=0, atol=0)
    assert obs.is_contiguous()   # the caller's tensor is left alone
