"""The measurements of ``python -m rlzoo_transfer.bench`` (what each section times, and how, is described there):
interleaved paired timing, the models and replay they run on, each section, and the targets' PASS / MISS.
"""
from __future__ import annotations

import copy
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from rlzoo_transfer.bench import BATCH, GAME, N_ACTIONS, SECTIONS
from rlzoo_transfer.bench_reference import ReferenceDER

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ====================================================================================== timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 2,
                number: int = 1) -> dict[str, list[float]]:
    """Milliseconds per call of each fn, ``repeats`` samples each, the fns interleaved.

    Round r runs the fns rotated by r, and every other cycle of rotations in reverse order: a fn that thrashes
    the caches (a large model) then precedes each other fn about equally often, so none is measured cold more.

    :param fns: name -> zero-argument callable
    :param number: calls per sample (the sample is their mean)
    """
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    _sync(device)
    samples: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        s = r % len(names)
        order = names[s:] + names[:s]
        for k in (order[::-1] if (r // len(names)) % 2 else order):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(number):
                fns[k]()
            _sync(device)
            samples[k].append((time.perf_counter() - t0) * 1e3 / number)
    return samples


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over repetitions of a_r / b_r (samples from one interleaved run)."""
    return float(statistics.median([x / y for x, y in zip(a, b) if y > 0]))


def quartiles(xs: list[float]) -> list[float]:
    q = np.percentile(np.asarray(xs), [25, 75])
    return [round(float(q[0]), 3), round(float(q[1]), 3)]


# ====================================================================================== machine
def machine_info(device: torch.device) -> dict[str, Any]:
    """What the timings ran on.  Shared VMs all call their CPU "AMD EPYC": the kernel release, clock and cache
    size are what tell two hosts apart, so that absolute times from different runs are not compared by mistake."""
    cpu = platform.processor() or platform.machine()
    cpuinfo: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpuinfo.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpuinfo.get("model name", cpu), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "numpy": np.__version__, "kernel": platform.release(),
    }
    for key, name in (("cpu MHz", "cpu_mhz"), ("cache size", "cache"), ("microcode", "microcode")):
        if key in cpuinfo:
            info[name] = cpuinfo[key]
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# ====================================================================================== models and data
def _silent_logger():
    from stable_baselines3.common.logger import Logger

    return Logger(folder=None, output_formats=[])


def fill_replay(buffer, env, steps: int, seed: int = 0) -> None:
    """Step ``env`` with uniform random actions and store the transitions the way SB3 does."""
    rng = np.random.default_rng(seed)
    obs = env.reset()
    n = env.num_envs
    for _ in range(max(1, steps // n)):
        actions = rng.integers(env.action_space.n, size=n)
        new_obs, rewards, dones, infos = env.step(actions)
        next_obs = new_obs.copy()
        for i, done in enumerate(dones):
            if done and infos[i].get("terminal_observation") is not None:
                next_obs[i] = infos[i]["terminal_observation"]
        buffer.add(obs, next_obs, actions, rewards, dones, infos)
        obs = new_obs


def _prepare(model, replay, obs1: np.ndarray):
    """Share the filled replay, silence the logger, set the state ``_sample_action`` reads."""
    model.replay_buffer = replay
    model.set_logger(_silent_logger())
    model._last_obs = obs1
    model.policy.set_training_mode(True)
    return model


def build_method_model(name: str, env, device: str, source: str | None, seed: int = 0,
                       overrides: dict[str, Any] | None = None):
    """A DER for registered method ``name`` (as ``python -m rlzoo_transfer.train`` builds it)."""
    from rlzoo_transfer.config import load_config
    from rlzoo_transfer.rl.registry import get_method
    from rlzoo_transfer.run import RunSpec, build_model

    method = get_method(name)
    config = load_config(method.config_file, {"buffer_size": 2000, **(overrides or {})})
    spec = RunSpec(game=GAME, method=name, seed=seed, source=source if method.needs_source else None,
                   device=device, progress_bar=False)
    return build_model(spec, config, env, tb_dir=None)


def _cat_forward_loss(model):
    """DER's loss with ONE online forward over cat(obs, next_obs) instead of two (same math, same noise)."""
    from rlzoo_transfer.rl.distributional import categorical_target

    pol = model.policy

    def loss_fn(obs, actions, returns, discounts, next_obs, weights, progress):
        batch = obs.shape[0]
        rows = torch.arange(batch, device=obs.device)
        x_all = pol.scale(torch.cat([obs, next_obs]))
        lp_all = pol.q_net(x_all)
        log_probs = lp_all[:batch]
        with torch.no_grad():
            next_action = (lp_all[batch:].detach().exp() * pol.support).sum(-1).argmax(1)
            next_probs = pol.q_net_target(x_all[batch:])[rows, next_action].exp()
            target = categorical_target(next_probs, returns, discounts, pol.support)
        ce = -(target * log_probs[rows, actions]).sum(-1)
        return (weights * ce).mean(), ce.detach(), {}

    return loss_fn


def scratch_breakdown(model, repeats: int, device: torch.device) -> dict[str, float]:
    """Median ms of each phase of one ``DER.train`` step, replayed phase by phase (mirrors rl/der.py)."""
    phases = ("sample", "noise", "forward_loss", "backward", "clip", "adam", "priorities")
    out: dict[str, list[float]] = {p: [] for p in phases}
    pol, rb = model.policy, model.replay_buffer
    for r in range(repeats + 2):
        t: dict[str, float] = {}

        def mark(name, t0):
            _sync(device)
            t[name] = (time.perf_counter() - t0) * 1e3
            return time.perf_counter()

        t0 = time.perf_counter()
        batch = rb.sample(BATCH, beta=model.beta)
        t0 = mark("sample", t0)
        pol.reset_noise()
        pol.reset_target_noise()
        t0 = mark("noise", t0)
        loss, ce, _ = model._loss_fn(batch.observations, batch.actions, batch.returns, batch.discounts,
                                     batch.next_observations, batch.weights, 0.0)
        t0 = mark("forward_loss", t0)
        pol.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t0 = mark("backward", t0)
        nn.utils.clip_grad_norm_(pol.q_net.parameters(), model.max_grad_norm)
        t0 = mark("clip", t0)
        pol.optimizer.step()
        t0 = mark("adam", t0)
        rb.update_priorities(batch.indices, ce.cpu().numpy())
        float(loss.item())
        mark("priorities", t0)
        if r >= 2:
            for p in phases:
                out[p].append(t[p])
    return {p: round(median(v), 3) for p, v in out.items()}


# ====================================================================================== sections
def bench_env(repeats: int, quick: bool, device: torch.device) -> dict[str, float]:
    from rlzoo_transfer.envs import make_env

    rng = np.random.default_rng(0)
    envs, fns = {}, {}
    agent_steps = 200 if quick else 800
    for n in (1, 8):
        env = make_env(GAME, n, seed=0)
        env.reset()
        envs[n] = env
        k = max(1, agent_steps // n)

        def run(env=env, n=n, k=k):
            for _ in range(k):
                env.step(rng.integers(env.action_space.n, size=n))
        fns[str(n)] = run
    samples = interleaved(fns, repeats, device, warmup=1)
    out = {}
    for n in (1, 8):
        k = max(1, agent_steps // n)
        out[str(n)] = round(n * k / (median(samples[str(n)]) / 1e3), 1)
        envs[n].close()
    return out


def bench_lockstep(scratch, replay, obs1: np.ndarray, env, device: str, repeats: int, ks: tuple[int, ...],
                   source: str) -> dict[str, Any]:
    """Lock-step (rl/lockstep.py) update and action ms per agent for each K, interleaved with the single update.

    The K scratch agents share one replay (sampling cost is still paid K times); acting is greedy on one game each.
    """
    from types import SimpleNamespace

    from rlzoo_transfer.rl.lockstep import Lockstep

    dev = torch.device(device)
    out: dict[str, Any] = {"k": list(ks), "update_ms_per_agent": {}, "act_ms_per_agent": {},
                           "update_x_single": {}, "single_update_ms": None}
    groups = {}
    for k in ks:
        models = [_prepare(build_method_model("scratch", env, device, source, seed=i), replay, obs1)
                  for i in range(k)]
        for m in models:
            m.num_timesteps = m.learning_starts   # acting past warm-up: the network picks the actions
        groups[k] = Lockstep([SimpleNamespace(model=m) for m in models], progress=False)
    kmax = max(ks)
    if kmax > 1:   # the same agents, their replays sampled one after another (what threads save)
        serial = Lockstep([SimpleNamespace(model=m) for m in groups[kmax].models], progress=False, sample_threads=1)
    fns = {"single": lambda: scratch.train(gradient_steps=1, batch_size=BATCH)}
    fns.update({f"K={k}": g._train for k, g in groups.items()})
    if kmax > 1:
        fns[f"K={kmax},serial"] = serial._train
    samples = interleaved(fns, repeats, dev, warmup=2)
    out["single_update_ms"] = round(median(samples["single"]), 3)
    for k in ks:
        per_agent = [v / k for v in samples[f"K={k}"]]
        out["update_ms_per_agent"][str(k)] = round(median(per_agent), 3)
        out["update_x_single"][str(k)] = round(paired_ratio(per_agent, samples["single"]), 3)
    if kmax > 1:
        out["sample_threads"] = groups[kmax].sample_threads
        out["serial_sampling_update_ms_per_agent"] = {str(kmax): round(median(
            [v / kmax for v in samples[f"K={kmax},serial"]]), 3)}
        serial.close()
    acts = interleaved({f"K={k}": g._actions for k, g in groups.items()}, repeats, dev, warmup=2)
    for k in ks:
        out["act_ms_per_agent"][str(k)] = round(median([v / k for v in acts[f"K={k}"]]), 3)
    for g in groups.values():
        g.close()
    return out


def bench_run(device: str, repeats: int, quick: bool, steps: int = 100_000) -> dict[str, Any]:
    """Agent steps/s of real scratch training (``DER.learn``) past warm-up, per torch thread count.

    One DER per thread count (same seed), each first played through its warm-up (``learning_starts`` steps, timed:
    no updates yet), then ``repeats`` chunks of ``chunk`` steps each, the thread counts interleaved (rotated) so a
    noisy machine's drifts hit all alike.  ``projected_100k_min`` = warm-up time + (steps - learning_starts) /
    steps_per_s, in minutes (evaluation not included).
    """
    from rlzoo_transfer.envs import make_env

    cores = os.cpu_count() or 1
    threads = sorted({1, cores})
    chunk = 100 if quick else 400
    models, warm = {}, {}
    before = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            env = make_env(GAME, 1, seed=0)
            overrides = {"buffer_size": 20_000} if not quick else {"buffer_size": 2000, "learning_starts": 200}
            m = build_method_model("scratch", env, device, None, seed=0, overrides=overrides)
            m.set_logger(_silent_logger())
            t0 = time.perf_counter()
            m.learn(m.learning_starts, reset_num_timesteps=True)   # warm-up: acting only, no update yet
            warm[t] = (time.perf_counter() - t0) / m.num_timesteps   # s per warm-up step
            models[t] = m
        samples: dict[int, list[float]] = {t: [] for t in threads}
        for r in range(repeats):
            order = threads[r % len(threads):] + threads[:r % len(threads)]
            for t in order:
                torch.set_num_threads(t)
                m = models[t]
                t0 = time.perf_counter()
                m.learn(chunk, reset_num_timesteps=False)
                samples[t].append(chunk / (time.perf_counter() - t0))
        out: dict[str, Any] = {"chunk_steps": chunk, "learning_starts": models[threads[0]].learning_starts,
                               "steps_per_s": {}, "projected_100k_min": {}}
        for t in threads:
            rate = median(samples[t])
            ls = models[t].learning_starts
            out["steps_per_s"][str(t)] = round(rate, 1)
            out["projected_100k_min"][str(t)] = round((ls * warm[t] + (steps - ls) / rate) / 60, 1)
        for m in models.values():
            m.env.close()
        return out
    finally:
        torch.set_num_threads(before)


def bench_adaagg(repeats: int, quick: bool, device: torch.device) -> tuple[dict, dict]:
    """(ratios {layer: {m: adaagg/plain}}, ms {layer: {"plain": ms, "m2": ms, "m5": ms}})."""
    from rlzoo_transfer.layers import AdaAggConv2d, AdaAggLinear

    cases = {
        "der_conv 32->64 5x5 s5, 20x20, B32": (lambda: nn.Conv2d(32, 64, 5, stride=5), (32, 32, 20, 20)),
        "der_linear 576->256, B32": (lambda: nn.Linear(576, 256), (32, 576)),
        "resnet_conv 256->256 3x3, 14x14, B8": (lambda: nn.Conv2d(256, 256, 3, padding=1), (8, 256, 14, 14)),
        "resnet_linear 2048->1000, B8": (lambda: nn.Linear(2048, 1000), (8, 2048)),
    }
    ratios, ms = {}, {}
    torch.manual_seed(0)
    for name, (make, shape) in cases.items():
        plain = make().to(device)
        layers = {"plain": plain}
        for m in (2, 5):
            cls = AdaAggConv2d if isinstance(plain, nn.Conv2d) else AdaAggLinear
            layers[f"m{m}"] = cls([make() for _ in range(m)], mode="adaptive", align=True).to(device)
        x = torch.randn(*shape, device=device, requires_grad=True)

        def fwd_bwd(layer):
            def run():
                x.grad = None
                layer.zero_grad(set_to_none=True)
                layer(x).sum().backward()
            return run
        reps = repeats if "resnet_conv" not in name else max(2, repeats // 3)
        samples = interleaved({k: fwd_bwd(v) for k, v in layers.items()}, reps, device, warmup=1)
        ratios[name] = {str(m): round(paired_ratio(samples[f"m{m}"], samples["plain"]), 2) for m in (2, 5)}
        ms[name] = {k: round(median(v), 3) for k, v in samples.items()}
        paths = {k: getattr(v, "last_path", None) for k, v in layers.items() if k != "plain"}
        ms[name]["paths"] = paths
    return ratios, ms


ZOO_BARE = "zoo(mix,no gate,no T)"
HUB_RANDOM = "hub(k=1,random)"
CHEAP_GENERATORS = ("pooled", "linear")   # hub(k=1) is also timed with these -p generator= values
VARIANT_NOTES = {   # the two variants that split a target method's update cost (build_models)
    ZOO_BARE: "zoo without its gate nets and alignment T: zoo-avg without T with every AdaAgg layer on the 'mix' "
              "path (one conv / matmul with m*O outputs, then a weighted sum: the path zoo takes for every layer "
              "here), i.e. the cost of aggregating m sources' outputs per sample before Zoo-Tuning's gate and T",
    HUB_RANDOM: "hub(k=1) without its pathway generator (a random source per sample): the sparse routing, the "
                "source networks and the exploit loss alone",
}


def build_models(env, device: str, source: str, methods: list[str] | None, fill: int | None, quick: bool,
                 result: dict[str, Any]):
    """Scratch and every wanted method (plus ``hub(k=1)`` variants, and with zoo / hub the variants of
    ``VARIANT_NOTES`` that split their cost), all sharing one replay filled with real Alien transitions.  Returns
    ``(replay, obs1, models)``; a method that does not build is reported in ``result["failed"]``, not fatal."""
    from rlzoo_transfer.rl.registry import METHODS

    log("building scratch and filling its replay ...")
    scratch = build_method_model("scratch", env, device, source)
    replay = scratch.replay_buffer
    fill = fill if fill is not None else (600 if quick else 4000)
    if fill > replay.capacity:
        from rlzoo_transfer.rl.buffers import PrioritizedNStepReplay

        replay = PrioritizedNStepReplay(fill + 100, env.observation_space, env.action_space,
                                        device=torch.device(device), n_steps=scratch.n_step_return,
                                        gamma=scratch.gamma, alpha=scratch.priority_exponent,
                                        reward_clip=scratch.reward_clip, seed=0)
    fill_replay(replay, env, fill)
    result["settings"]["replay_transitions"] = replay.size()
    obs1 = env.reset()
    models: dict[str, Any] = {"scratch": _prepare(scratch, replay, obs1)}

    def add(name: str, method: str, overrides: dict | None = None) -> None:
        try:
            models[name] = _prepare(build_method_model(method, env, device, source, overrides=overrides),
                                    replay, obs1)
            log(f"built {name}")
        except Exception as e:  # noqa: BLE001 - a method that does not build is reported, not fatal
            result["failed"][name] = f"{type(e).__name__}: {e}"
            log(f"method {name} failed to build: {type(e).__name__}: {e}")
            if os.environ.get("RLZOO_BENCH_DEBUG"):
                traceback.print_exc()

    wanted = [m for m in METHODS if m != "scratch"] if methods is None else [m for m in methods if m != "scratch"]
    for name in wanted:
        if name not in METHODS:
            result["failed"][name] = f"not a registered method (registered: {', '.join(METHODS)})"
        else:
            add(name, name)
    if "zoo" in wanted:
        add(ZOO_BARE, "zoo-avg", {"align": False})
        if ZOO_BARE in models:
            force_mix_path(models[ZOO_BARE].policy.q_net)
            add_note(result["notes"], ZOO_BARE, VARIANT_NOTES[ZOO_BARE])
    if "hub" in METHODS and (methods is None or "hub(k=1)" in methods or "hub" in methods):
        add("hub(k=1)", "hub", {"k": 1})      # the target is for one active source per sample; hub's default is k=2
        for gen in CHEAP_GENERATORS:
            add(f"hub(k=1,{gen})", "hub", {"k": 1, "generator": gen})
        add(HUB_RANDOM, "hub-random", {"k": 1})
        if HUB_RANDOM in models:
            add_note(result["notes"], HUB_RANDOM, VARIANT_NOTES[HUB_RANDOM])
    return replay, obs1, models


def add_note(notes: dict[str, str], key: str, text: str) -> None:
    """Add ``text`` to the report's note on ``key``, after what it already says."""
    notes[key] = f"{notes[key]}; {text}" if key in notes else text


def note_hub_shares(models: dict[str, Any], notes: dict[str, str]) -> None:
    """Sparse routing: a hub's cost depends on how its last batch split; note each hub's share per source."""
    for k, m in models.items():
        hub = getattr(m.policy.q_net, "hub", None)
        if hub is not None and hub.last_load is not None:
            add_note(notes, k, "share of the last update batch routed to each source: "
                     + ", ".join(f"{v:.2f}" for v in hub.last_load.tolist()))


def force_mix_path(net: nn.Module) -> None:
    """Put every AdaAgg layer of ``net`` on the 'mix' path (m*O outputs, weighted sum)."""
    from rlzoo_transfer.layers import adaagg_layers

    for _, layer in adaagg_layers(net):
        layer.path = "mix"


def scratch_variants(env, device: str, source: str, replay, obs1, quick: bool, compile: bool,
                     result: dict[str, Any]) -> dict[str, Any]:
    """Candidate speed-ups of our update, measured without touching der.py: the other Adam implementations,
    one forward over ``cat(obs, next_obs)`` and, with ``compile``, ``DER(compile=True)``."""
    variants: dict[str, Any] = {}
    if not quick:
        base = _prepare(build_method_model("scratch", env, device, source), replay, obs1)
        defaults = base.policy.optimizer.defaults
        current = "fused" if defaults.get("fused") else ("foreach" if defaults.get("foreach") else "single")
        result["settings"]["scratch_adam"] = current
        for impl, kw in (("single", {"foreach": False, "fused": False}), ("foreach", {"foreach": True}),
                         ("fused", {"fused": True})):
            if impl == current:
                continue
            name = f"scratch-adam-{impl}"
            try:
                m = _prepare(build_method_model("scratch", env, device, source), replay, obs1)
                m.policy.optimizer = torch.optim.Adam(m.policy.q_net.parameters(), lr=m.learning_rate,
                                                      eps=m.adam_eps, **kw)
                variants[name] = m
            except Exception as e:  # noqa: BLE001
                result["failed"][name] = f"{type(e).__name__}: {e}"
        base._loss_fn = _cat_forward_loss(base)
        variants["scratch-catfwd"] = base
    if compile:
        try:
            log("compiling scratch-compiled (DER(compile=True)) ...")
            m = _prepare(build_method_model("scratch", env, device, source, overrides={"compile": True}),
                         replay, obs1)
            t0 = time.perf_counter()
            m.train(gradient_steps=1, batch_size=BATCH)
            m.train(gradient_steps=1, batch_size=BATCH)
            result["settings"]["compile_s"] = round(time.perf_counter() - t0, 1)
            variants["scratch-compiled"] = m
        except Exception as e:  # noqa: BLE001
            result["failed"]["scratch-compiled"] = f"{type(e).__name__}: {e}"
    return variants


def bench_updates(models: dict[str, Any], variants: dict[str, Any], replay, repeats: int, quick: bool,
                  dev: torch.device, result: dict[str, Any]) -> None:
    """``update_ms`` (medians), IQRs and paired ratios to the reference and to scratch, in two interleaved groups
    that each hold reference and scratch (short repetitions pair better on a noisy machine); a method whose update
    raises is reported in ``result["failed"]`` and left out."""
    torch.manual_seed(0)
    ref = ReferenceDER(N_ACTIONS, dev)
    # ready-made NCHW batches, as a plain replay of stacked frames hands them over (ours come channels-last)
    pool = [b._replace(observations=b.observations.contiguous(), next_observations=b.next_observations.contiguous())
            for b in (replay.sample(BATCH, beta=0.4) for _ in range(8))]
    counter = [0]

    def ref_step():
        counter[0] += 1
        ref.update(pool[counter[0] % len(pool)])

    def train_fn(m):
        return lambda: m.train(gradient_steps=1, batch_size=BATCH)

    def usable(fns):
        good = {}
        for k, fn in fns.items():
            try:
                fn()
                good[k] = fn
            except Exception as e:  # noqa: BLE001
                result["failed"][k] = f"update: {type(e).__name__}: {e}"
                log(f"{k} update failed: {type(e).__name__}: {e}")
        return good

    base = {"reference": ref_step, "scratch": train_fn(models["scratch"])}
    extra = {k: train_fn(m) for k, m in variants.items()}
    threads = torch.get_num_threads()
    if threads > 1 and not quick:   # the same update on one intra-op thread, switched per call
        def one_thread(fn=train_fn(models["scratch"])):
            torch.set_num_threads(1)
            try:
                fn()
            finally:
                torch.set_num_threads(threads)
        extra["scratch-1thread"] = one_thread
    core = usable({**base, **extra})
    others = usable({k: train_fn(m) for k, m in models.items() if k != "scratch"})
    groups = [core, {**base, **others}] if others and not quick else [{**core, **others}]
    result["update_groups"] = [list(g) for g in groups]
    result["update_ms"], result["update_iqr_ms"] = {}, {}
    result["ratios"] = {"vs_reference": {}, "vs_scratch": {}}
    for gi, group in enumerate(groups):
        log(f"updates, group {gi + 1}/{len(groups)}: {', '.join(group)}")
        samples = interleaved(group, repeats, dev, warmup=2)
        for k, v in samples.items():
            if k in result["update_ms"]:   # reference / scratch: reported from the first group
                continue
            result["update_ms"][k] = round(median(v), 3)
            result["update_iqr_ms"][k] = quartiles(v)
            for base_key, ratios in (("reference", "vs_reference"), ("scratch", "vs_scratch")):
                if base_key in samples:   # absent when its own update failed (reported under "failed")
                    result["ratios"][ratios][k] = round(paired_ratio(v, samples[base_key]), 3)
    note_hub_shares(models, result["notes"])
    log("scratch breakdown ...")
    result["scratch_breakdown_ms"] = scratch_breakdown(models["scratch"], repeats, dev)


def bench_eval(models: dict[str, Any], obs1: np.ndarray, repeats: int, dev: torch.device,
               result: dict[str, Any]) -> None:
    """Greedy action (1 observation) and forward (8) in evaluation mode: scratch, zoo-lite, zoo-lite exported."""
    lite_key = "zoo-lite" if "zoo-lite" in models else None
    pols = {"scratch": copy.deepcopy(models["scratch"].policy)}
    if lite_key is not None:
        try:
            pols[lite_key] = copy.deepcopy(models[lite_key].policy)
            pols[f"{lite_key}-exported"] = models[lite_key].policy.export()
        except Exception as e:  # noqa: BLE001
            result["failed"][f"{lite_key}-exported"] = f"{type(e).__name__}: {e}"
    obs_t = torch.as_tensor(obs1, device=dev)
    obs8 = torch.as_tensor(np.repeat(obs1, 8, axis=0), device=dev)
    for p in pols.values():
        p.set_training_mode(False)

    def q_act(p, o):
        def run():
            with torch.no_grad():
                p.q_values(o).argmax(1).cpu()
        return run
    log("evaluation forward ...")
    s1 = interleaved({k: q_act(p, obs_t) for k, p in pols.items()}, repeats * 2, dev, warmup=3, number=20)
    s8 = interleaved({k: q_act(p, obs8) for k, p in pols.items()}, repeats * 2, dev, warmup=3, number=20)
    result["eval_act_ms"] = {k: round(median(v), 3) for k, v in s1.items()}
    result["eval_forward8_ms"] = {k: round(median(v), 3) for k, v in s8.items()}
    result["eval_ratios_vs_scratch"] = {k: round(paired_ratio(v, s1["scratch"]), 3) for k, v in s1.items()}


def run_bench(repeats: int = 30, quick: bool = False, methods: list[str] | None = None, device: str = "cpu",
              compile: bool = False, source: str = "Seaquest", fill: int | None = None,
              sections: tuple[str, ...] = SECTIONS,
              lockstep_k: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Run the benchmark's ``sections`` and return the result dict (bench.py's docstring)."""
    from rlzoo_transfer.envs import make_env

    dev = torch.device(device)
    torch.manual_seed(0)
    np.random.seed(0)
    result: dict[str, Any] = {"device": str(dev), "machine": machine_info(dev),
                              "settings": {"game": GAME, "batch_size": BATCH, "n_actions": N_ACTIONS,
                                           "repeats": repeats, "quick": quick, "compile": compile,
                                           "source": source},
                              "failed": {}, "notes": {}}
    t_start = time.perf_counter()
    if "env" in sections:
        log("env throughput ...")
        result["env_steps_per_s"] = bench_env(max(3, repeats // 4), quick, dev)
    env = make_env(GAME, 1, seed=0)
    if int(env.action_space.n) != N_ACTIONS:
        raise RuntimeError(f"{GAME} has {env.action_space.n} actions, expected {N_ACTIONS}")
    replay, obs1, models = build_models(env, device, source, methods, fill, quick, result)
    variants = scratch_variants(env, device, source, replay, obs1, quick, compile, result)
    if "act" in sections:   # action selection in training mode, as DER acts
        log("action selection ...")
        fns = {k: (lambda m=m: m._sample_action(0, None, 1)) for k, m in models.items()}
        samples = interleaved(fns, repeats, dev, warmup=3, number=3)
        result["act_ms"] = {k: round(median(v), 3) for k, v in samples.items()}
    if "update" in sections:
        bench_updates(models, variants, replay, repeats, quick, dev, result)
    if "eval" in sections:
        bench_eval(models, obs1, repeats, dev, result)
    if "lockstep" in sections:
        ks = lockstep_k or ((1, 2) if quick else (1, 8, 32))
        log(f"lock-step updates, K = {', '.join(map(str, ks))} ...")
        result["lockstep"] = bench_lockstep(models["scratch"], replay, obs1, env, device, repeats, tuple(ks), source)
    if "run" in sections:
        log("training throughput (DER.learn, 1 thread and all cores) ...")
        result["run"] = bench_run(device, max(3, repeats // 2), quick)
    if "adaagg" in sections:
        log("AdaAgg layers ...")
        result["adaagg"], result["adaagg_ms"] = bench_adaagg(max(3, repeats // 2), quick, dev)
    result["targets"] = evaluate_targets(result, models)
    try:                                              # the load the timings met, not just the load they began in
        result["machine"]["load_avg_end_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    env.close()
    return result


def _hub_k(model) -> int | None:
    for mod in model.policy.q_net.modules():
        if type(mod).__name__ == "HubPathway":
            return int(mod.k)
    return None


def evaluate_targets(result: dict[str, Any], models: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS / MISS / N/A for each documented target (never raises)."""
    rr = result.get("ratios", {})
    vs_ref, vs_scr = rr.get("vs_reference", {}), rr.get("vs_scratch", {})
    out = []

    def add(name, key, value, limit, cmp="<=", note=""):
        if value is None:
            status = "N/A"
        elif cmp == "<=":
            status = "PASS" if value <= limit else "MISS"
        else:  # "~=": within 10% either way
            status = "PASS" if abs(value - 1.0) <= limit else "MISS"
        out.append({"target": name, "measured": key, "value": value, "limit": limit, "status": status,
                    "note": note})

    add("scratch <= 0.8x reference", "scratch", vs_ref.get("scratch"), 0.8)
    if "scratch-compiled" in vs_ref:   # what `-p compile=true` would give
        add("scratch <= 0.8x reference", "scratch-compiled", vs_ref["scratch-compiled"], 0.8,
            note="with -p compile=true")
    zoo_key = "zoo" if "zoo" in vs_scr else None
    # the variants that split a target's cost, beside it: "zoo(mix,no gate,no T) 1.9"
    split = {k: f"{k} {vs_scr[k]}" for k in (ZOO_BARE, HUB_RANDOM) if k in vs_scr}
    add("zoo <= 1.5x scratch", zoo_key, vs_scr.get(zoo_key) if zoo_key else None, 1.5, note=split.get(ZOO_BARE, ""))
    ev = result.get("eval_ratios_vs_scratch", {})
    ex_key = next((k for k in ev if k.endswith("-exported")), None)
    add("zoo-lite exported == scratch at evaluation (+-10%)", ex_key, ev.get(ex_key) if ex_key else None, 0.10,
        cmp="~=")
    hub_keys = [k for k in ("hub(k=1)", "hub") if k in vs_scr]
    hub_key = next((k for k in hub_keys if k in models and _hub_k(models[k]) == 1), hub_keys[0] if hub_keys else None)
    notes = []
    if hub_key and hub_key in models:
        k = _hub_k(models[hub_key])
        notes.append(f"k={k}" + ("" if k == 1 else " (target is for k=1)"))
    if HUB_RANDOM in split:
        notes.append(split[HUB_RANDOM])
    add("hub(k=1) <= 1.6x scratch", hub_key, vs_scr.get(hub_key) if hub_key else None, 1.6, note="; ".join(notes))
    for gen in CHEAP_GENERATORS:
        if f"hub(k=1,{gen})" in vs_scr:
            add("hub(k=1) <= 1.6x scratch", f"hub(k=1,{gen})", vs_scr[f"hub(k=1,{gen})"], 1.6,
                note=f"with -p generator={gen}")
    proj = result.get("run", {}).get("projected_100k_min", {})
    best = min(proj, key=lambda t: proj[t]) if proj else None
    add("100k scratch run <= 20 min", f"run ({best} threads)" if best else None, proj.get(best) if best else None,
        20.0, note="training only, evaluation excluded" if best else "")
    return out
