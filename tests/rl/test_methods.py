"""Transfer methods on the shipped zoo (pretrain/: Seaquest and Riverraid, 18 actions each) and real ALE games:
every method builds for 8- and 18-action targets (Gopher, Alien) and trains; finetune starts from exactly the
source weights (output rows mapped by action meaning); Zoo-Tuning with one-hot gates is a source policy, lite
Zoo-Tuning exports to its evaluation forward; Knowledge Flow without teachers is its student; Hub-Pathway's output
is a mixture of the sources and its auxiliary losses are logged; a game outside the papers' list is a target too.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import Logger

from rlzoo_transfer.config import load_config
from rlzoo_transfer.envs import make_env
from rlzoo_transfer.games import PAPER_GAMES, action_meanings
from rlzoo_transfer.layers import AdaAggConv2d, AdaAggNoisyLinear, NoisyLinear, adaagg_layers, export_module
from rlzoo_transfer.rl.der import DER
from rlzoo_transfer.rl.methods import (FLOW_POINTS, BlockMean, HubNetwork, KnowledgeFlowNetwork, ZooNetwork,
                                       pathway_generator)
from rlzoo_transfer.rl.policies import DERNetwork
from rlzoo_transfer.rl.registry import METHODS, get_method
from rlzoo_transfer.run import RunSpec, build_model
from rlzoo_transfer.zoo import load_source

SOURCES = ("Seaquest", "Riverraid")
K = 51
LAYERS = ("conv1", "conv2", "value_hidden", "value_out", "advantage_hidden", "advantage_out")
GAMES = {"Gopher": 8, "Alien": 18}
#: every method, finetune once per source
VARIANTS = [(name, src) for name in METHODS for src in (SOURCES if METHODS[name].needs_source else (None,))]
STEPS, LEARNING_STARTS = 200, 100  # 100 updates: statistics are logged at update 100
TINY = {"learning_starts": LEARNING_STARTS, "buffer_size": 2000, "batch_size": 16}


def variant_id(v) -> str:
    return f"{v[0]}-{v[1]}" if v[1] else v[0]


def build(game: str, method: str, env, source: str | None = None, **overrides) -> DER:
    """The DER model of a run, exactly as ``run_training`` builds it (tiny replay settings)."""
    config = load_config(get_method(method).config_file, {**TINY, **overrides})
    return build_model(RunSpec(game=game, method=method, source=source, seed=0), config, env, None)


def real_frames(env, n: int = 12, seed: int = 0) -> torch.Tensor:
    """n real game frames (random play) and 4 random-noise frames, as the network's float input in [0, 1]."""
    rng = np.random.default_rng(seed)
    obs, frames = env.reset(), []
    for t in range(3 * n):
        obs, *_ = env.step(rng.integers(0, env.action_space.n, size=(1,)))
        if t % 3 == 2:
            frames.append(obs[0])
    frames += list(rng.integers(0, 256, (4, 4, 84, 84), dtype=np.uint8))
    return torch.as_tensor(np.stack(frames)).float().div(255.0)


@pytest.fixture(scope="module")
def envs():
    out = {game: make_env(game, 1, seed=0) for game in (*GAMES, "Pong", "Breakout")}
    yield out
    for env in out.values():
        env.close()


@pytest.fixture(scope="module")
def frames(envs):
    return {game: real_frames(env) for game, env in envs.items()}


@pytest.fixture(scope="module")
def built(envs):
    """(game, method, source) -> DER model, built once per module (tests deep-copy networks they modify)."""
    cache: dict = {}

    def get(game: str, method: str, source: str | None = None) -> DER:
        key = (game, method, source)
        if key not in cache:
            cache[key] = build(game, method, envs[game], source)
        return cache[key]

    return get


def log_probs(net: torch.nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
    net.train(training)
    with torch.no_grad():
        return net(x)


def assert_normalised(lp: torch.Tensor, n_actions: int, batch: int) -> None:
    assert lp.shape == (batch, n_actions, K)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(batch, n_actions), rtol=0, atol=1e-5)


# --- building ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("game", GAMES)
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_every_method_builds_with_normalised_log_probs(variant, game, built, frames):
    method, source = variant
    model = built(game, method, source)
    n_actions = GAMES[game]
    assert model.action_space.n == n_actions
    net, x = model.policy.q_net, frames[game]
    family = {"zoo": ZooNetwork, "hub": HubNetwork, "kflow": KnowledgeFlowNetwork}
    expected = next((cls for prefix, cls in family.items() if method.startswith(prefix)), DERNetwork)
    assert type(net) is expected
    for training in (True, False):
        assert_normalised(log_probs(net, x, training), n_actions, len(x))
    # the target network starts as an exact copy of the online one
    target = model.policy.q_net_target.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, target[key]), key
    q = model.policy.q_values((x * 255).to(torch.uint8))
    assert q.shape == (len(x), n_actions) and torch.isfinite(q).all()


def test_finetune_needs_its_source_and_names_its_folder():
    m = get_method("finetune")
    assert m.needs_source and m.folder("Seaquest") == "finetune-Seaquest"
    assert not get_method("zoo").needs_source and get_method("zoo").folder("Seaquest") == "zoo"
    _, kwargs = m.network("Gopher", "Riverraid", {"zoo_dir": None, "fresh_output": False})
    assert kwargs["source"] == "Riverraid" and kwargs["game"] == "Gopher"
    # ablations pin their setting over the config file's value
    _, kwargs = get_method("zoo-lite").network("Gopher", None, {"mode": "adaptive"})
    assert kwargs["mode"] == "lite"


# --- finetune ------------------------------------------------------------------------------------------------------
def action_rows(game: str, source_actions: list[str]) -> list[int]:
    """Source action index of each of the target's actions, by meaning."""
    return [source_actions.index(a) for a in action_meanings(game)]


@pytest.mark.parametrize("game", [*GAMES, "Breakout"])
@pytest.mark.parametrize("source", SOURCES)
def test_finetune_starts_from_exactly_the_source_weights(source, game, built):
    net = built(game, "finetune", source).policy.q_net
    src = load_source(source)
    assert src.actions == action_meanings(source) and len(src.actions) == 18
    rows = action_rows(game, src.actions)
    if game == "Gopher":  # UPFIRE is Gopher's action 5 but the source's 10: a prefix of the rows would be wrong
        assert rows == [0, 1, 2, 3, 4, 10, 11, 12]
    sd = net.state_dict()
    assert set(sd) == set(src.state_dict)
    for key, value in sd.items():
        if not key.startswith("advantage_out."):
            assert torch.equal(value, src.state_dict[key]), key
            continue
        source_value = src.state_dict[key]
        assert value.shape[0] == len(rows) * K and source_value.shape[0] == 18 * K
        for k, j in enumerate(rows):
            assert torch.equal(value[k * K:(k + 1) * K], source_value[j * K:(j + 1) * K]), (key, k, j)


def test_finetune_with_fresh_output_keeps_the_torso(envs):
    net = build("Gopher", "finetune", envs["Gopher"], "Seaquest", fresh_output=True).policy.q_net
    src = load_source("Seaquest")
    rows = action_rows("Gopher", src.actions)
    for key, value in net.state_dict().items():
        if key.startswith("advantage_out.weight_mu"):
            mapped = torch.cat([src.state_dict[key][j * K:(j + 1) * K] for j in rows])
            assert not torch.equal(value, mapped)
        elif not key.startswith("advantage_out."):
            assert torch.equal(value, src.state_dict[key]), key


# --- Zoo-Tuning ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,mode,align", [("zoo", "adaptive", True), ("zoo-lite", "lite", True),
                                               ("zoo-avg", "average", True), ("zoo-noalign", "adaptive", False)])
def test_zoo_layers_are_adaagg_over_the_sources_with_identity_alignment(method, mode, align, built):
    net = built("Gopher", method).policy.q_net
    layers = dict(adaagg_layers(net.net))
    assert tuple(layers) == LAYERS
    assert net.source_names == list(SOURCES)
    kinds = {"conv1": AdaAggConv2d, "conv2": AdaAggConv2d}
    for name, layer in layers.items():
        assert type(layer) is kinds.get(name, AdaAggNoisyLinear) and layer.m == 2 and layer.mode == mode
        assert (layer.gate is None) == (mode == "average")
        if align and name not in ("value_out", "advantage_out"):  # output rows are (action, atom): no T
            eye = torch.eye(layer.out_channels).expand(2, -1, -1)
            assert layer.align is not None and torch.equal(layer.align.detach(), eye), name
        else:
            assert layer.align is None, name


def set_one_hot_gates(net: torch.nn.Module, i: int, m: int = 2) -> None:
    """Every AdaAgg layer's gate -> source i: last gate Linear weight 0, bias +30 for i and -30 for the others."""
    for _, layer in adaagg_layers(net):
        last = layer.gate[-1]
        assert isinstance(last, torch.nn.Linear) and last.out_features == m
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(-30.0)
            last.bias[i] = 30.0


@pytest.mark.parametrize("i", [0, 1])
def test_zoo_with_one_hot_gates_is_the_source_policy(i, built, frames):
    zoo = copy.deepcopy(built("Gopher", "zoo").policy.q_net)
    finetune = copy.deepcopy(built("Gopher", "finetune", SOURCES[i]).policy.q_net)
    x = frames["Gopher"]
    expected = log_probs(finetune, x, False)
    assert (log_probs(zoo, x, False) - expected).abs().max() > 1e-3  # the learned-from-nothing gates mix
    for layer in LAYERS:  # gate_norm "sum": a convex combination of the sources
        assert sum(zoo.statistics()[f"gate/{layer}/{s}"] for s in SOURCES) == pytest.approx(1.0, abs=1e-6)
    set_one_hot_gates(zoo, i)
    # float32 rounding differs between the aggregated and the plain conv: log-probs reach ~-60, hence rtol
    torch.testing.assert_close(log_probs(zoo, x, False), expected, rtol=1e-6, atol=1e-5)
    stats = zoo.statistics()
    assert set(stats) == {f"gate/{layer}/{s}" for layer in LAYERS for s in SOURCES}
    for layer in LAYERS:
        assert stats[f"gate/{layer}/{SOURCES[i]}"] == pytest.approx(1.0, abs=1e-6)
    # in training mode too, with the zoo's one noise sample given to the source's noisy layers
    for name, layer in adaagg_layers(zoo.net):
        if isinstance(layer, AdaAggNoisyLinear):
            target = finetune.get_submodule(name)
            assert isinstance(target, NoisyLinear)
            target.weight_epsilon.copy_(layer.weight_epsilon)
            target.bias_epsilon.copy_(layer.bias_epsilon)
    torch.testing.assert_close(log_probs(zoo, x, True), log_probs(finetune, x, True), rtol=1e-6, atol=1e-5)


def test_zoo_avg_is_the_source_weights_average(built, frames):
    zoo = built("Gopher", "zoo-avg").policy.q_net
    sds = [built("Gopher", "finetune", s).policy.q_net.state_dict() for s in SOURCES]
    mean = DERNetwork(8)
    mean.load_state_dict({k: (sds[0][k] + sds[1][k]) / 2 for k in sds[0]})
    x = frames["Gopher"]
    torch.testing.assert_close(log_probs(zoo, x, False), log_probs(mean, x, False), rtol=0, atol=1e-5)


def test_zoo_lite_export_equals_its_evaluation_forward(built, frames):
    zoo = copy.deepcopy(built("Gopher", "zoo-lite").policy.q_net)
    x = frames["Gopher"]
    zoo.train()
    zoo(x[:8]).sum().backward()  # a training forward: the temporal ensemble takes this batch's mean gate
    with torch.no_grad():
        for _, layer in adaagg_layers(zoo.net):
            assert int(layer.ema_steps) == 1 and not torch.allclose(layer.gate_ema, torch.full((2,), 0.5))
            if layer.align is not None:  # a trained, non-identity alignment
                layer.align.add_(0.01 * torch.randn_like(layer.align))
    expected = log_probs(zoo, x, False)
    exported = export_module(copy.deepcopy(zoo))
    assert not adaagg_layers(exported)
    assert [type(exported.net.get_submodule(n)) for n in LAYERS] == [torch.nn.Conv2d] * 2 + [NoisyLinear] * 4
    torch.testing.assert_close(log_probs(exported, x, False), expected, rtol=0, atol=1e-5)


def test_policy_export_is_a_plain_channels_last_der_network(built, frames):
    """DERPolicy.export(): zoo-lite's policy as a plain DER network (same greedy Q-values at evaluation) whose
    convolutions are channels-last like a scratch DERNetwork's (the fast path for its channels-last input)."""
    policy = built("Alien", "zoo-lite").policy
    policy.set_training_mode(False)
    obs = (frames["Alien"][:6] * 255).round().to(torch.uint8)
    with torch.no_grad():
        expected = policy.q_values(obs)
    exported = policy.export()
    exported.set_training_mode(False)
    assert type(exported.q_net) is DERNetwork and type(exported.q_net_target) is DERNetwork   # no wrapper left
    convs = [m for m in exported.q_net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    with torch.no_grad():
        torch.testing.assert_close(exported.q_values(obs), expected, rtol=0, atol=1e-4)
    assert adaagg_layers(policy.q_net)   # the original is untouched


def test_policy_export_keeps_adaptive_zoo_layers(built, frames):
    """An adaptive zoo has input-dependent gates: export() keeps its AdaAgg layers (and their gate logging)."""
    policy = built("Alien", "zoo").policy
    exported = policy.export()
    assert type(exported.q_net) is type(policy.q_net) and adaagg_layers(exported.q_net)


# --- Knowledge Flow ------------------------------------------------------------------------------------------------
def test_kflow_policy_export_is_the_student(built, frames):
    """Only the student acts at evaluation: export() leaves the teachers and transforms behind."""
    policy = built("Gopher", "kflow").policy
    policy.set_training_mode(False)
    obs = (frames["Gopher"][:6] * 255).round().to(torch.uint8)
    with torch.no_grad():
        expected = policy.q_values(obs)
    exported = policy.export()
    exported.set_training_mode(False)
    assert type(exported.q_net) is DERNetwork
    assert sum(p.numel() for p in exported.q_net.parameters()) == sum(
        p.numel() for p in policy.q_net.student.parameters())
    with torch.no_grad():
        torch.testing.assert_close(exported.q_values(obs), expected, rtol=0, atol=0)


def test_kflow_teachers_are_the_frozen_sources(built):
    net = built("Gopher", "kflow").policy.q_net
    assert net.source_names == list(SOURCES)
    for teacher, source in zip(net.teachers, SOURCES):
        reference = built("Gopher", "finetune", source).policy.q_net.state_dict()
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, reference[key]), (source, key)
        assert not any(p.requires_grad for p in teacher.parameters())
    assert torch.equal(net.theta.detach(), torch.zeros(len(FLOW_POINTS), 3))


def test_kflow_is_its_student_at_evaluation_and_without_teachers(built, frames):
    net = copy.deepcopy(built("Gopher", "kflow").policy.q_net)
    x = frames["Gopher"]
    torch.testing.assert_close(log_probs(net, x, False), log_probs(net.student, x, False), rtol=0, atol=0)
    # in training the teachers flow in (equal weights at init) ...
    assert (log_probs(net, x, True) - log_probs(net.student, x, True)).abs().max() > 1e-3
    # ... until their weights are 0: then the student alone, noise included
    with torch.no_grad():
        net.theta[:, 0] = 30.0
        net.theta[:, 1:] = -30.0
    torch.testing.assert_close(log_probs(net, x, True), log_probs(net.student, x, True), rtol=0, atol=1e-5)


@pytest.mark.parametrize("i", [0, 1])
def test_kflow_with_all_weight_on_a_teacher_is_the_students_head_on_its_features(i, built, frames):
    """Transforms Q are identity at init: every flow point carries teacher i's activation (noise off), and the
    student's (noisy) output layers read it."""
    net = copy.deepcopy(built("Gopher", "kflow").policy.q_net)
    with torch.no_grad():
        net.theta.fill_(-30.0)
        net.theta[:, i + 1] = 30.0
    hybrid = copy.deepcopy(net.teachers[i])
    hybrid.value_out = copy.deepcopy(net.student.value_out)
    hybrid.advantage_out = copy.deepcopy(net.student.advantage_out)
    assert not hybrid.value_hidden.noisy or not hybrid.value_hidden.noise_enabled
    x = frames["Gopher"]
    torch.testing.assert_close(log_probs(net, x, True), log_probs(hybrid, x, True), rtol=0, atol=1e-5)


# --- Hub-Pathway ---------------------------------------------------------------------------------------------------
def test_hub_output_is_the_mixture_of_the_source_policies(built, frames):
    net = built("Gopher", "hub").policy.q_net
    hub = net.hub
    assert hub.k == 2 and not hub.random_pathway and hub.renormalize
    x = frames["Gopher"]
    lp = log_probs(net, x, False)
    assert_normalised(lp, 8, len(x))
    with torch.no_grad():
        g = hub.pathway(x)  # eval: no gate noise
        sources = [built("Gopher", "finetune", s).policy.q_net.eval()(x).exp() for s in SOURCES]
    assert g.shape == (len(x), 2) and (g > 0).all()
    mixture = g[:, 0, None, None] * sources[0] + g[:, 1, None, None] * sources[1]
    torch.testing.assert_close(lp.exp(), mixture, rtol=0, atol=1e-6)
    assert set(net.statistics()) == {"pathway/Seaquest", "pathway/Riverraid"}
    assert sum(net.statistics().values()) == pytest.approx(1.0, abs=1e-6)
    # the random-pathway ablation activates both models with weight 1/m: the even mixture
    random = log_probs(built("Gopher", "hub-random").policy.q_net, x, False)
    torch.testing.assert_close(random.exp(), (sources[0] + sources[1]) / 2, rtol=0, atol=1e-6)


def test_hub_exploit_loss_trains_a_peaked_source(built, frames):
    """On Gopher frames the Seaquest source puts most (action, atom) probabilities below 1e-8 (log p down to ~-125):
    the hub once took log(clamp(p, 1e-8)), and the exploit loss (eq. 5) gave that source no gradient.  Now its
    gradient is its own C51 cross-entropy's, as for the source network alone."""
    net = copy.deepcopy(built("Gopher", "hub").policy.q_net).eval()
    alone = copy.deepcopy(built("Gopher", "finetune", "Seaquest").policy.q_net).eval()
    x = frames["Gopher"]
    with torch.no_grad():
        assert (alone(x) < math.log(1e-8)).float().mean() > 0.5
    target = torch.full((len(x), K), 1.0 / K)   # mass on every atom of action 0

    def cross_entropy(log_probs, rows):
        return -(target[rows] * log_probs[:, 0]).sum(-1)

    net(x)
    seaquest = net.hub.models[SOURCES.index("Seaquest")].net
    got = torch.autograd.grad(net.hub.exploit_loss(cross_entropy), list(seaquest.parameters()), allow_unused=True)
    want = torch.autograd.grad(cross_entropy(alone(x), torch.arange(len(x))).sum() / len(x),
                               list(alone.parameters()), allow_unused=True)   # eval: the noise scales are unused
    assert [g is None for g in got] == [w is None for w in want]
    for g, w in zip(got, want):
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert max(w.abs().max() for w in want if w is not None) > 1e-2


@pytest.mark.parametrize("kind, block", [("pooled", 4), ("linear", 8)])
def test_hub_cheaper_generator_trains(envs, frames, kind, block):
    """``-p generator=pooled`` (~20x fewer multiply-adds than the torso) and ``linear`` (~1600x): same mixture
    output, and the generator learns."""
    torso = pathway_generator("torso", 2)
    cheap = pathway_generator(kind, 2)
    x = frames["Gopher"]
    assert cheap(x).shape == torso(x).shape == (len(x), 4)
    assert sum(p.numel() for p in cheap.parameters()) < sum(p.numel() for p in torso.parameters()) / 5
    model = build("Gopher", "hub", envs["Gopher"], generator=kind)
    hub = model.policy.q_net.hub
    assert isinstance(hub.generator[0], BlockMean)
    for layout in (torch.contiguous_format, torch.channels_last):   # BlockMean is average pooling
        torch.testing.assert_close(hub.generator[0](x.contiguous(memory_format=layout)),
                                   torch.nn.functional.avg_pool2d(x, block), rtol=0, atol=1e-6)
    assert_normalised(log_probs(model.policy.q_net, x, True), 8, len(x))
    before = {k: v.clone() for k, v in hub.generator.state_dict().items()}
    model.set_logger(RecordingLogger())
    model.learn(LEARNING_STARTS + 20)
    assert {"explore_loss", "exploit_loss"} <= set(model.last_losses)
    assert any(not torch.equal(before[k], v) for k, v in hub.generator.state_dict().items())
    with pytest.raises(ValueError, match="unknown pathway generator"):
        pathway_generator("resnet", 2)


# --- training ------------------------------------------------------------------------------------------------------
AUX = {"hub": {"explore_loss", "exploit_loss"}, "hub-random": {"exploit_loss"}, "hub-noexplore": {"exploit_loss"},
       "hub-noexploit": {"explore_loss"}, "kflow": {"dependency_loss"}}


def expected_statistics(method: str) -> set[str]:
    if method.startswith("zoo"):
        return {f"gate/{layer}/{s}" for layer in LAYERS for s in SOURCES}
    if method.startswith("hub"):
        return {f"pathway/{s}" for s in SOURCES}
    if method == "kflow":
        return {f"flow/{p}/{n}" for p in FLOW_POINTS for n in ("student", *SOURCES)}
    return set()


class RecordingLogger(Logger):
    """SB3's logger, writing nowhere, remembering every recorded key."""

    def __init__(self):
        super().__init__(None, [])
        self.seen: dict[str, object] = {}

    def record(self, key, value, exclude=None):
        self.seen[key] = value
        super().record(key, value, exclude)


TRAINED = [v for v in VARIANTS if v != ("finetune", "Seaquest")]  # one finetune run: the same code for each source


@pytest.mark.parametrize("variant", TRAINED, ids=variant_id)
def test_every_method_trains_on_a_real_game(variant):
    method, source = variant
    env = make_env("Gopher", 1, seed=0)
    try:
        model = build("Gopher", method, env, source)
        logger = RecordingLogger()
        model.set_logger(logger)
        before = {k: v.clone() for k, v in model.policy.q_net.state_dict().items()}
        model.learn(STEPS)
    finally:
        env.close()
    assert model.num_timesteps == STEPS and model._n_updates == STEPS - LEARNING_STARTS
    aux = AUX.get(method, set())
    losses = model.last_losses
    assert set(losses) == {"loss", "cross_entropy"} | aux
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert 0 < losses["cross_entropy"] < 10
    for key in losses:  # the auxiliary losses are logged with the DER loss
        assert f"train/{key}" in logger.seen, key
    if "explore_loss" in aux:  # 0.1 * -H(mean gate), H in [0, log 2]
        assert -0.1 * math.log(2) - 1e-6 <= losses["explore_loss"] <= 1e-6
    if "exploit_loss" in aux:  # each of the k = 2 activated models' C51 loss, PER-weighted
        assert 0 < losses["exploit_loss"] < 2 * 10
    if method == "kflow":  # lambda(t) = progress (~1 at the end) * the teachers' flow weights (~2/3 per point)
        assert 0 < losses["dependency_loss"] <= len(FLOW_POINTS)
    stats = model.policy.statistics()
    assert set(stats) == expected_statistics(method)
    assert all(math.isfinite(v) for v in stats.values())
    for key in stats:  # logged at update 100
        assert f"stats/{key}" in logger.seen, key
    # it learned: parameters moved (for the zoo, the gates too); noise samples (``*_epsilon``) do not count
    after = model.policy.q_net.state_dict()
    moved = {k for k in before if not k.endswith("_epsilon") and not torch.equal(before[k], after[k])}
    assert any(k.endswith((".weight", ".weight_mu")) for k in moved)
    if method.startswith("zoo") and method != "zoo-avg":
        assert any(".gate." in k for k in moved)
    if method == "zoo-lite":  # the temporal ensemble followed every update (not acting / target forwards)
        for _, layer in adaagg_layers(model.policy.q_net.net):
            assert int(layer.ema_steps) == STEPS - LEARNING_STARTS
    if method.startswith("hub") and method != "hub-random":
        assert any(k.startswith("hub.generator.") for k in moved)
    if method == "kflow":
        assert "theta" in moved and not any(k.startswith("teachers.") for k in moved)


# --- a game outside the papers' list -------------------------------------------------------------------------------
@pytest.mark.parametrize("game,n_actions", [("Pong", 6), ("Breakout", 4)])
def test_a_game_outside_the_papers_list_is_a_target(game, n_actions, built, frames):
    assert game not in PAPER_GAMES
    for method, source in [("zoo", None), ("hub", None), ("kflow", None), ("finetune", "Riverraid")]:
        net = built(game, method, source).policy.q_net
        assert_normalised(log_probs(net, frames[game], True), n_actions, len(frames[game]))


@pytest.mark.parametrize("game,method", [("Pong", "zoo"), ("Breakout", "hub")])
def test_a_game_outside_the_papers_list_trains(game, method):
    env = make_env(game, 1, seed=0)
    try:
        model = build(game, method, env, learning_starts=50)
        model.learn(100)
    finally:
        env.close()
    assert model.action_space.n == {"Pong": 6, "Breakout": 4}[game] and model._n_updates == 50
    assert all(math.isfinite(v) for v in model.last_losses.values())
    assert set(model.last_losses) >= {"loss", "cross_entropy"} | AUX.get(method, set())
