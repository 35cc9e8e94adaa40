"""The bench's reference DER update against our DER (same loss, gradients and Adam step), and the CLI's JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlzoo_transfer import bench, bench_reference, bench_timing
from rlzoo_transfer.envs import make_env
from rlzoo_transfer.rl.buffers import ReplaySample
from rlzoo_transfer.rl.policies import DERNetwork

B = 32


@pytest.fixture(scope="module")
def env():
    e = make_env("Alien", 1, seed=0)
    yield e
    e.close()


def make_batch(seed: int = 0) -> ReplaySample:
    """A batch that exercises every branch of the projection: atoms landing exactly on support points (returns
    0.4 = dz with discount 1, and returns 0 with discount 0), clamping beyond v_max / v_min, terminals, generic."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (B, 4, 84, 84), generator=g, dtype=torch.uint8)
    next_obs = torch.randint(0, 256, (B, 4, 84, 84), generator=g, dtype=torch.uint8)
    actions = torch.randint(0, bench.N_ACTIONS, (B,), generator=g)
    returns = (torch.rand(B, generator=g) * 6 - 3).float()
    discounts = torch.full((B,), 0.99 ** 20)
    returns[0], discounts[0] = 0.4, 1.0     # every atom lands on a support point
    returns[1], discounts[1] = 0.0, 0.0     # terminal: all mass on z = 0 exactly
    returns[2], discounts[2] = 15.0, 0.5    # beyond v_max
    returns[3], discounts[3] = -12.0, 0.0   # terminal beyond v_min
    returns[4], discounts[4] = 1.3, 0.0     # terminal between atoms
    weights = torch.rand(B, generator=g) * 0.9 + 0.1
    return ReplaySample(obs, actions, returns, discounts, next_obs, weights, np.arange(B))


def make_pair(env, seed: int = 0):
    """(our DER model, reference online net, reference target net) with identical weights and noise samples; the
    target differs from the online net so the double-Q choice matters."""
    torch.manual_seed(seed)
    model = bench_timing.build_method_model("scratch", env, "cpu", None, seed=seed)
    model.set_logger(bench_timing._silent_logger())
    pol = model.policy
    other = DERNetwork(bench.N_ACTIONS)
    pol.q_net_target.load_state_dict(other.state_dict())
    pol.set_training_mode(True)   # as DER.train: noisy online and target nets
    online, target = bench_reference.RefDERNet(bench.N_ACTIONS), bench_reference.RefDERNet(bench.N_ACTIONS)
    online.load_state_dict(pol.q_net.state_dict())
    target.load_state_dict(pol.q_net_target.state_dict())
    online.train()
    target.train()
    return model, online, target


def test_reference_network_equals_der_network(env):
    model, online, _ = make_pair(env)
    x = make_batch().observations.float() / 255
    for training in (True, False):
        model.policy.q_net.train(training)
        online.train(training)
        torch.testing.assert_close(online(x), model.policy.q_net(x), rtol=0, atol=1e-5)


def test_reference_loss_equals_der_loss_and_gradients(env):
    model, online, target = make_pair(env)
    batch = make_batch()
    loss, ce, aux = model._loss(batch.observations, batch.actions, batch.returns, batch.discounts,
                                batch.next_observations, batch.weights, 0.0)
    ref_loss, ref_ce = bench_reference.reference_loss(online, target, batch.observations, batch.actions, batch.returns,
                                            batch.discounts, batch.next_observations, batch.weights)
    assert aux == {}
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    torch.testing.assert_close(ce, ref_ce, rtol=0, atol=1e-5)
    assert ce.min() > 0 and torch.isfinite(ce).all()
    loss.backward()
    ref_loss.backward()
    ours = dict(model.policy.q_net.named_parameters())
    for name, p in online.named_parameters():
        torch.testing.assert_close(p.grad, ours[name].grad, rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_reference_projection_hand_computed():
    """The reference's floor / ceil projection on terminal rows, where the target is a point mass computed by hand:
    on an atom it stays there, beyond v_min it is clamped, between atoms it splits linearly."""
    net = bench_reference.RefDERNet(bench.N_ACTIONS)
    batch = make_batch()
    with torch.no_grad():
        _, ce = bench_reference.reference_loss(net, net, batch.observations, batch.actions, batch.returns,
                                     batch.discounts, batch.next_observations, batch.weights)
        log_p = net(batch.observations.float() / 255)[torch.arange(B), batch.actions]
    support = torch.linspace(-10, 10, 51)
    i0, i_min = int((support - 0.0).abs().argmin()), 0
    torch.testing.assert_close(ce[1], -log_p[1, i0])         # terminal, R = 0: all mass on z = 0
    torch.testing.assert_close(ce[3], -log_p[3, i_min])      # terminal, R = -12: clamped to v_min
    lo = int(((1.3 + 10) / 0.4))                             # terminal, R = 1.3: split between neighbours
    frac = (1.3 + 10) / 0.4 - lo
    torch.testing.assert_close(ce[4], -((1 - frac) * log_p[4, lo] + frac * log_p[4, lo + 1]), atol=1e-5, rtol=0)


def test_full_update_step_matches_reference(env):
    """One DER.train step and one reference update from the same weights, noise and batch leave the same weights."""
    model, online, target = make_pair(env)
    ref = bench_reference.ReferenceDER(bench.N_ACTIONS)
    ref.online, ref.target = online, target
    ref.optimiser = torch.optim.Adam(online.parameters(), lr=1e-4, eps=1.5e-4)
    batch = make_batch(1)
    rb = model.replay_buffer
    rb.tree.update(np.arange(B), np.ones(B))        # non-empty tree, so train() does not skip
    rb.sample = lambda *a, **k: batch               # the same batch for both
    model.policy.reset_noise = model.policy.reset_target_noise = lambda: None  # keep the shared noise sample
    before = {k: v.detach().clone() for k, v in online.named_parameters()}
    model.train(gradient_steps=1, batch_size=B)
    ref_ce = ref.update(batch, resample_noise=False)
    ours = dict(model.policy.q_net.named_parameters())
    for name, p in online.named_parameters():
        assert (p - before[name]).abs().max() > 1e-5, f"{name} did not move"   # Adam's first step is ~lr = 1e-4
        torch.testing.assert_close(p, ours[name], rtol=0, atol=1e-7, msg=lambda m: f"{name}: {m}")
    # priorities were set from the same per-sample losses
    torch.testing.assert_close(torch.as_tensor(rb.tree.get(np.arange(B))),
                               (ref_ce.double() + 1e-6) ** rb.alpha, rtol=1e-5, atol=0)


def test_cost_split_variants_are_zoo_without_gate_and_t_and_hub_without_generator(env):
    """The variants that split the zoo and hub(k=1) targets' costs are what their notes say."""
    from rlzoo_transfer.layers import HubPathway, adaagg_layers

    result = {"settings": {}, "failed": {}, "notes": {}}
    _, _, models = bench_timing.build_models(env, "cpu", "Seaquest", ["zoo", "hub"], 300, True, result)
    assert not result["failed"], result["failed"]
    bare, zoo = models[bench_timing.ZOO_BARE], models["zoo"]
    layers = adaagg_layers(bare.policy.q_net)
    assert len(layers) == len(adaagg_layers(zoo.policy.q_net)) == 6
    assert all(layer.gate is None and layer.align is None and layer.path == "mix" for _, layer in layers)
    for m in (bare, zoo):
        m.train(gradient_steps=1, batch_size=B)
    assert [layer.last_path for _, layer in layers] == ["mix"] * 6
    # zoo itself takes the mix path for every layer here, so the variant differs from it by the gate and T only
    assert [layer.last_path for _, layer in adaagg_layers(zoo.policy.q_net)] == ["mix"] * 6
    hub = next(mod for mod in models[bench_timing.HUB_RANDOM].policy.q_net.modules() if isinstance(mod, HubPathway))
    assert hub.random_pathway and hub.k == 1
    assert set(result["notes"]) == {bench_timing.ZOO_BARE, bench_timing.HUB_RANDOM}
    models[bench_timing.HUB_RANDOM].train(gradient_steps=1, batch_size=B)
    bench_timing.note_hub_shares(models, result["notes"])   # adds to the variant's note, does not replace it
    note = result["notes"][bench_timing.HUB_RANDOM]
    assert note.startswith(bench_timing.VARIANT_NOTES[bench_timing.HUB_RANDOM]) and "routed to each source" in note


def test_targets_show_the_cost_split_beside_their_target():
    vs_scratch = {"scratch": 1.0, "zoo": 2.3, bench_timing.ZOO_BARE: 1.9, "hub(k=1)": 2.0, bench_timing.HUB_RANDOM: 1.5}
    result = {"ratios": {"vs_reference": {"scratch": 0.85}, "vs_scratch": vs_scratch}}
    targets = {t["target"]: t for t in bench_timing.evaluate_targets(result, {})}
    zoo, hub = targets["zoo <= 1.5x scratch"], targets["hub(k=1) <= 1.6x scratch"]
    assert (zoo["value"], zoo["status"], zoo["note"]) == (2.3, "MISS", "zoo(mix,no gate,no T) 1.9")
    assert (hub["value"], hub["status"], hub["note"]) == (2.0, "MISS", "hub(k=1,random) 1.5")
    assert targets["scratch <= 0.8x reference"]["status"] == "MISS"


def test_interleaved_and_paired_ratio():
    calls = []
    s = bench_timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 4,
                          torch.device("cpu"), warmup=1)
    assert len(s["a"]) == len(s["b"]) == 4 and calls[:2] == ["a", "b"] and calls[4:6] == ["b", "a"]
    assert bench_timing.paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0]) == 2.0


def test_interleaved_balances_what_runs_before_each_fn():
    """A cache-thrashing fn ("big") must not precede one of the others much more often than the other."""
    calls = []
    bench_timing.interleaved({k: (lambda k=k: calls.append(k)) for k in ("small", "big", "exported")}, 12,
                      torch.device("cpu"), warmup=1)
    pairs = list(zip(calls[2:], calls[3:]))           # from the warm-up's last call on
    after_big = {k: sum(1 for a, b in pairs if a == "big" and b == k) for k in ("small", "exported")}
    assert abs(after_big["small"] - after_big["exported"]) <= 2, after_big


def test_cli_quick_json(tmp_path):
    out = tmp_path / "b.json"
    proc = subprocess.run([sys.executable, "-m", "rlzoo_transfer.bench", "--quick", "--json", "--repeats", "2",
                           "--methods", "zoo-lite", "--out", str(out)], capture_output=True, text=True,
                          timeout=900)   # ~1-2 min alone; a 2-core machine shared with training runs took > 300 s
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == result
    for key in ("update_ms", "ratios", "env_steps_per_s", "act_ms", "adaagg", "machine", "device", "targets",
                "eval_act_ms", "lockstep", "run"):
        assert key in result, key
    assert {"reference", "scratch", "zoo-lite"} <= set(result["update_ms"])
    assert all(v > 0 for v in result["update_ms"].values())
    assert set(result["ratios"]) == {"vs_reference", "vs_scratch"}
    assert result["ratios"]["vs_scratch"]["scratch"] == 1.0
    assert all(v > 0 for v in result["env_steps_per_s"].values()) and set(result["env_steps_per_s"]) == {"1", "8"}
    assert all(v > 0 for v in result["act_ms"].values())
    assert "zoo-lite-exported" in result["eval_act_ms"]
    for layer, r in result["adaagg"].items():
        assert set(r) == {"2", "5"} and all(v > 0 for v in r.values()), layer
    assert {"cpu", "torch", "threads", "kernel"} <= set(result["machine"])
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if "cpu MHz" in cpuinfo and "cache size" in cpuinfo:    # the host's identity beyond "AMD EPYC" (x86 Linux)
        assert {"cpu_mhz", "cache"} <= set(result["machine"])
        assert f"kernel {result['machine']['kernel']}, MHz {result['machine']['cpu_mhz']}" in bench.render(result)
    if hasattr(os, "getloadavg"):
        assert "load_avg_end_1m" in result["machine"]
    assert result["commit"] and {"torch", "stable-baselines3", "ale-py"} <= set(result["versions"])
    assert result["commit"] in bench.render(result)
    assert result["device"] == "cpu"
    assert {t["status"] for t in result["targets"]} <= {"PASS", "MISS", "N/A"}
    ls = result["lockstep"]
    assert ls["k"] == [1, 2] and ls["single_update_ms"] > 0
    assert set(ls["update_ms_per_agent"]) == set(ls["act_ms_per_agent"]) == {"1", "2"}
    assert all(v > 0 for v in ls["update_ms_per_agent"].values()) and all(v > 0 for v in ls["update_x_single"].values())
    assert "## Lock-step" in bench.render(result)
    assert ls["serial_sampling_update_ms_per_agent"]["2"] > 0 and ls["sample_threads"] == min(2, os.cpu_count() or 1)
    assert "sampled one after another" in bench.render(result)
    rn = result["run"]
    threads = {"1", str(os.cpu_count() or 1)}
    assert set(rn["steps_per_s"]) == set(rn["projected_100k_min"]) == threads
    assert all(v > 0 for v in rn["steps_per_s"].values())
    # the projection is the measured rates put together: warm-up + (100k - learning_starts) / rate
    for t in threads:
        floor = (100_000 - rn["learning_starts"]) / (rn["steps_per_s"][t] + 0.05) / 60   # rates are rounded to 0.1
        assert rn["projected_100k_min"][t] >= floor - 0.05
    assert any(t["target"].startswith("100k scratch run") and t["status"] in ("PASS", "MISS")
               for t in result["targets"])
    assert "## Training throughput" in bench.render(result)


def test_unknown_method_is_refused_before_timing(capsys):
    """Before, a typo was timed around (minutes) and only reported as a ``failed`` entry of the result."""
    assert bench.main(["--methods", "zoo", "zooo", "--sections", "update"]) == 2
    err = capsys.readouterr().err
    assert "unknown method(s) 'zooo'" in err and "hub(k=1)" in err


def test_help_and_a_typo_answer_without_torch():
    """``bench --help`` took ~3 s (torch at the module top); the CLI now parses, and checks ``--methods``, before
    bench_timing (and torch) is imported."""
    code = ("import sys, contextlib, io\nfrom rlzoo_transfer import bench\nout, err = io.StringIO(), io.StringIO()\n"
            "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
            "    try:\n        bench.main(['--help'])\n"
            "    except SystemExit as e:\n        print(e.code, file=sys.stderr)\n"
            "    code = bench.main(['--methods', 'zooo'])\n"
            "print(sorted(m for m in ('torch', 'stable_baselines3', 'scipy') if m in sys.modules), code)\n"
            "print(out.getvalue() + err.getvalue(), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] 2", proc.stdout + proc.stderr
    assert "--sections" in proc.stderr and "unknown method(s) 'zooo'" in proc.stderr
