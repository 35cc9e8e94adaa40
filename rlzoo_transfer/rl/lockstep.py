"""K independent DER agents trained in lock-step in one process (one game or several, any seeds).

Every agent keeps its own SB3 ``DER`` object - env, prioritised replay, callbacks, logger, run folder - so it writes
exactly the files of a single run (``curves`` reads them unchanged, and any agent can later ``--resume`` alone).
Only the networks are pooled: the K online (and K target) networks become one set of stacked tensors
(``torch.func.stack_module_state``: every parameter and buffer gets a leading dimension K) evaluated with
``torch.func.functional_call`` under ``torch.vmap``:

    acting:   q_k = sum_z z p_theta_k(z | s, .)                       obs (K, n_envs, 4, 84, 84) -> (K, n_envs, A)
    target:   m_k = Phi(R + gamma^n z, p_target_k(. | s', argmax_a q_k(s', a)))            (K, B, n_atoms)
    loss:     l_k = mean_i w_ki CE(m_ki, p_theta_k(. | s_ki, a_ki))                                  (K,)
    update:   g = grad sum_k l_k;  g_k <- g_k min(1, c / (||g_k|| + 1e-6));  theta <- Adam(theta, g)

Agent k's loss depends on theta_k only, so the gradient of the sum holds the K per-agent gradients; the clip is per
agent (as ``clip_grad_norm_`` in a single run) and Adam is elementwise, so one optimiser step over the stacked
tensors is K independent Adam steps.  One lock-step iteration = one vector step of every agent's env (the envs run
concurrently: ale_py ``send`` for all, then ``recv``), the SB3 bookkeeping of ``collect_rollouts`` for each agent,
then one update of every agent: the schedule of a single run with ``train_freq=1, gradient_steps=1``.  The K
replays are sampled on threads (numpy's gathers release the GIL) and each batch field reaches the device in one
copy.  With noise off and the same seeds, agent k's losses equal those of the single run of its seed
(tests/rl/test_lockstep.py).

Noise: the stacked ``weight_epsilon`` / ``bias_epsilon`` buffers of all K agents are redrawn in one call per layer
(factorised Gaussian, as ``NoisyLinear.reset_noise``) before each action and each update, outside the vmapped
function, so the forward stays a pure function of (parameters, buffers, input).  The draws differ from a single run's.

The stacked state is copied back into the agents' own networks and optimisers (``sync_to_models``) before every
evaluation / checkpoint and at the end, so evaluation, checkpoints, ``model.zip`` and gate statistics use the
single-run code.  ``torch.compile`` (CUDA graphs via ``mode="reduce-overhead"`` on a GPU) wraps the update with
``-p compile=true``.

What may share a group (``check_compatible``): networks with the same parameter names and shapes (games with the
same number of actions; scratch, finetune and the zoo variants) and the same update settings.  Networks with an
auxiliary loss (hub, kflow) hold per-agent Python state in their loss and train as single runs.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from torch import nn
from torch.func import functional_call, stack_module_state

from rlzoo_transfer.rl.distributional import categorical_target
from rlzoo_transfer.threads import CoreShare

#: settings that must be equal across a lock-step group (one optimiser, one schedule)
SHARED_SETTINGS = ("learning_rate", "batch_size", "adam_eps", "max_grad_norm", "target_update_interval",
                   "learning_starts", "n_envs", "compile")


class LockstepError(ValueError):
    """Agents that cannot train in one lock-step group; the message says why."""


def _setting(model, key: str):
    if key == "n_envs":
        return model.n_envs
    if key == "learning_rate":
        return model.learning_rate if not callable(model.learning_rate) else model.lr_schedule(1.0)
    return getattr(model, key)


def check_compatible(models: Sequence) -> None:
    """Raise LockstepError unless all models can share stacked parameters and one update schedule."""
    if not models:
        raise LockstepError("a lock-step group needs at least one agent")
    first = models[0]
    shapes0 = {n: tuple(p.shape) for n, p in first.policy.q_net.state_dict().items()}
    for k, m in enumerate(models):
        if hasattr(m.policy.q_net, "auxiliary_loss"):
            raise LockstepError(f"agent {k}: {type(m.policy.q_net).__name__} has an auxiliary loss (hub, kflow); "
                                f"train it as a single run")
        shapes = {n: tuple(p.shape) for n, p in m.policy.q_net.state_dict().items()}
        if shapes != shapes0:
            diff = sorted(set(shapes.items()) ^ set(shapes0.items()))[:3]
            raise LockstepError(f"agent {k}'s network differs from agent 0's (e.g. {diff}); lock-step agents need "
                                f"networks of one shape (same method family and number of actions)")
        for key in SHARED_SETTINGS:
            if _setting(m, key) != _setting(first, key):
                raise LockstepError(f"agent {k} has {key}={_setting(m, key)!r} but agent 0 has "
                                    f"{_setting(first, key)!r}; lock-step agents share one update schedule")
        if not torch.equal(m.policy.support, first.policy.support):
            raise LockstepError(f"agent {k}'s C51 support differs from agent 0's")
        if m.train_freq.frequency != 1 or m.gradient_steps != 1:
            raise LockstepError("lock-step training implements train_freq=1, gradient_steps=1 (DER's schedule)")
    if len({m.num_timesteps for m in models}) > 1:
        steps = ", ".join(str(m.num_timesteps) for m in models)
        raise LockstepError(f"the agents' checkpoints are at different steps ({steps}); resume them as single runs")


def _scaled_noise(shape: tuple[int, ...], device) -> torch.Tensor:
    x = torch.randn(shape, device=device)
    return x.sign() * x.abs().sqrt()


class StackedNetworks:
    """K networks of one architecture as stacked tensors, with the DER update vmapped over agents.

    :param nets: the K online networks (their current values are copied)
    :param targets: the K target networks
    :param support: (n_atoms,) C51 atoms
    :param lr, adam_eps, max_grad_norm: the shared optimiser settings
    ``params[name]``: (K, *shape) leaf tensors the optimiser updates; ``buffers``: (K, *shape).
    """

    def __init__(self, nets: Sequence[nn.Module], targets: Sequence[nn.Module], support: torch.Tensor,
                 lr: float, adam_eps: float, max_grad_norm: float, compile: bool = False):
        self.k = len(nets)
        self.base = copy.deepcopy(nets[0]).to("meta")
        self.base.train(True)
        for m in self.base.modules():   # memory-format requests are not implemented inside vmap
            if hasattr(m, "channels_last"):
                m.channels_last = False
        self.params, self.buffers = stack_module_state(list(nets))
        tparams, self.target_buffers = stack_module_state(list(targets))
        self.target_params = {n: p.detach() for n, p in tparams.items()}
        self.support = support
        self.max_grad_norm = max_grad_norm
        device = support.device
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=lr, eps=adam_eps,
                                          fused=device.type in ("cpu", "cuda"))
        self.noisy = sorted({n.rsplit(".", 1)[0] for n in self.buffers if n.endswith("weight_epsilon")})
        self._loss = self._loss_impl
        if compile:
            mode = "reduce-overhead" if device.type == "cuda" else "default"
            self._loss = torch.compile(self._loss_impl, mode=mode, dynamic=False)

    # ------------------------------------------------------------------------------------------- network
    def _net(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        """One agent: (B, 4, 84, 84) float -> log-probabilities (B, A, n_atoms)."""
        return functional_call(self.base, (params, buffers), (x,))

    def log_probs(self, obs: torch.Tensor, target: bool = False) -> torch.Tensor:
        """(K, B, 4, 84, 84) uint8 -> (K, B, A, n_atoms) for every agent's own network."""
        p, b = (self.target_params, self.target_buffers) if target else (self.params, self.buffers)
        return torch.vmap(self._net)(p, b, obs.float().div(255.0))

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        """(K, B, 4, 84, 84) uint8 -> expected returns (K, B, A)."""
        return (self.log_probs(obs).exp() * self.support).sum(-1)

    @torch.no_grad()
    def reset_noise(self, target: bool = False) -> None:
        """Redraw the factorised noise of every noisy layer of all K agents: eps_w = f(e_out) f(e_in)^T."""
        buffers = self.target_buffers if target else self.buffers
        for name in self.noisy:
            w, b = buffers[f"{name}.weight_epsilon"], buffers[f"{name}.bias_epsilon"]
            e_out = _scaled_noise((self.k, w.shape[1]), w.device)
            e_in = _scaled_noise((self.k, w.shape[2]), w.device)
            w.copy_(e_out.unsqueeze(2) * e_in.unsqueeze(1))
            b.copy_(e_out)

    def sync_target(self) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                self.target_params[n].copy_(p)
            # buffers other than the noise (e.g. a lite gate's EMA) follow the online network, as load_state_dict
            for n, b in self.buffers.items():
                if not n.endswith("_epsilon"):
                    self.target_buffers[n].copy_(b)

    # -------------------------------------------------------------------------------------------- update
    def _agent_ce(self, params, buffers, x, actions, target):
        lp = self._net(params, buffers, x)                                            # (B, A, n_atoms)
        picked = lp.gather(1, actions.view(-1, 1, 1).expand(-1, 1, lp.shape[-1])).squeeze(1)
        return -(target * picked).sum(-1)                                             # (B,)

    def _loss_impl(self, obs, actions, returns, discounts, next_obs, weights):
        """Batched DER loss: inputs (K, B, ...) -> (per-agent losses l_k (K,), per-sample cross-entropy (K, B))."""
        with torch.no_grad():
            x_next = next_obs.float().div(255.0)
            online_next = torch.vmap(self._net)({n: p.detach() for n, p in self.params.items()}, self.buffers,
                                                x_next)
            next_action = (online_next.exp() * self.support).sum(-1).argmax(-1)       # (K, B)
            lp_t = torch.vmap(self._net)(self.target_params, self.target_buffers, x_next)
            next_probs = lp_t.gather(2, next_action[..., None, None].expand(-1, -1, 1, lp_t.shape[-1]))
            next_probs = next_probs.squeeze(2).exp()                                  # (K, B, n_atoms)
            target = torch.vmap(categorical_target, in_dims=(0, 0, 0, None))(next_probs, returns, discounts,
                                                                            self.support)
        ce = torch.vmap(self._agent_ce)(self.params, self.buffers, obs.float().div(255.0), actions, target)
        return (weights * ce).mean(1), ce.detach()

    def update(self, obs, actions, returns, discounts, next_obs, weights, lr: float) -> tuple[np.ndarray, torch.Tensor]:
        """One Adam step of every agent; returns (per-agent losses (K,), per-sample cross-entropy (K, B))."""
        losses, ce = self._loss(obs, actions, returns, discounts, next_obs, weights)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        grads = [p.grad for p in self.params.values() if p.grad is not None]  # None: unused (noise off)
        with torch.no_grad():  # per-agent clip_grad_norm_
            norms = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0).sqrt()   # (K,)
            coef = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
        self.optimizer.step()
        return losses.detach().cpu().numpy(), ce

    # ----------------------------------------------------------------------------------- to / from models
    def load_optimizer_state(self, optimizers: Sequence[torch.optim.Optimizer], nets: Sequence[nn.Module]) -> None:
        """Stack the agents' Adam moments (a resumed group) into the shared optimiser."""
        states = []
        for opt, net in zip(optimizers, nets):
            states.append({n: opt.state.get(p) for n, p in net.named_parameters()})
        for name, p in self.params.items():
            per_agent = [s[name] for s in states]
            if all(s is None or not s for s in per_agent):
                continue
            if any(s is None or not s for s in per_agent):
                raise LockstepError(f"optimiser state of {name!r} exists for some agents only; resume them singly")
            steps = {float(s["step"]) for s in per_agent}
            if len(steps) > 1:
                raise LockstepError(f"the agents' optimisers are at different steps {sorted(steps)}")
            self.optimizer.state[p] = {
                "step": per_agent[0]["step"].clone(),
                "exp_avg": torch.stack([s["exp_avg"] for s in per_agent]).to(p.device),
                "exp_avg_sq": torch.stack([s["exp_avg_sq"] for s in per_agent]).to(p.device),
            }

    @torch.no_grad()
    def sync_to_models(self, models: Sequence) -> None:
        """Copy agent k's slice of the stacked networks and Adam state into ``models[k]``'s own policy."""
        for k, m in enumerate(models):
            net, tgt, opt = m.policy.q_net, m.policy.q_net_target, m.policy.optimizer
            for n, p in net.named_parameters():
                p.copy_(self.params[n][k])
                st = self.optimizer.state.get(self.params[n])
                if st:
                    opt.state[p] = {"step": st["step"].clone(), "exp_avg": st["exp_avg"][k].clone(),
                                    "exp_avg_sq": st["exp_avg_sq"][k].clone()}
            for n, b in net.named_buffers():
                b.copy_(self.buffers[n][k])
            for n, p in tgt.named_parameters():
                p.copy_(self.target_params[n][k])
            for n, b in tgt.named_buffers():
                b.copy_(self.target_buffers[n][k])


class Lockstep:
    """Drive K prepared runs (``run.prepare_run``) in lock-step; see the module docstring.

    :param runs: the agents' ``PreparedRun``s (each with its own env, replay, callbacks and run folder)
    :param progress: show one progress bar for the group (else a log line every ``log_every`` seconds)
    :param sample_threads: threads that sample the K replays (default min(K, cores); 1 = no threads)
    """

    def __init__(self, runs: Sequence, progress: bool = True, log_every: float = 60.0, log_interval: int = 4,
                 sample_threads: int | None = None):
        self.runs = list(runs)
        # replay sampling threads (default: one per agent, at most one per core; 1 = in this thread)
        self.sample_threads = sample_threads or min(len(self.runs), os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None   # made by the first update, shut down by ``close``
        self.models = [r.model for r in self.runs]
        check_compatible(self.models)
        self.progress, self.log_every, self.log_interval = progress, log_every, log_interval
        self.share: CoreShare | None = None   # set by learn() where a run shares the cores
        self.stack()
        self.last_losses: list[dict[str, float]] = [{} for _ in self.models]

    def stack(self) -> None:
        """(Re)build the stacked networks and optimiser from the agents' own."""
        m0 = self.models[0]
        self.stacked = StackedNetworks([m.policy.q_net for m in self.models],
                                       [m.policy.q_net_target for m in self.models], m0.policy.support,
                                       lr=m0.lr_schedule(1.0), adam_eps=m0.adam_eps,
                                       max_grad_norm=m0.max_grad_norm, compile=m0.compile)
        self.stacked.load_optimizer_state([m.policy.optimizer for m in self.models],
                                          [m.policy.q_net for m in self.models])

    # ----------------------------------------------------------------------------------------- acting
    def _actions(self) -> list[np.ndarray]:
        m0 = self.models[0]
        if m0.num_timesteps < m0.learning_starts:  # SB3's uniform warm-up, from each agent's own action space
            return [OffPolicyAlgorithm._sample_action(m, m.learning_starts, None, m.n_envs)[0] for m in self.models]
        self.stacked.reset_noise()
        obs = torch.as_tensor(np.stack([m._last_obs for m in self.models]), device=m0.device)
        with torch.no_grad():
            actions = self.stacked.q_values(obs).argmax(-1).cpu().numpy()
        return list(actions)

    # --------------------------------------------------------------------------------------- learning
    def _sample_all(self) -> list:
        """Every agent's prioritised batch, on the CPU, the agents spread over ``sample_threads`` threads.

        Each replay samples from its own generator, so the batches do not depend on the threads' order; the frame
        gathers are numpy copies that release the GIL (8 replays of 20k: 11.0 -> 4.6 ms on 2 idle cores).  The
        batches stay on the CPU and are stacked there, so a GPU gets 6 copies per update instead of 6 K."""
        def one(m):
            return m.replay_buffer.sample(m.batch_size, beta=m.beta, device="cpu")

        if self.sample_threads <= 1:
            return [one(m) for m in self.models]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.sample_threads, thread_name_prefix="replay")
        return list(self._pool.map(one, self.models))

    def close(self) -> None:
        """Stop the sampling threads (``learn`` does this when it ends; a later update starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _train(self) -> None:
        for m in self.models:   # (the agents' own networks are not used here: no training-mode switch)
            m._update_learning_rate(m.policy.optimizer)   # logs train/learning_rate like a single run
        if any(m.replay_buffer.tree.total <= 0 for m in self.models):
            return  # no n-step window complete yet (as DER.train)
        batches = self._sample_all()
        dev = self.models[0].device
        stack = [torch.stack([getattr(b, f) for b in batches]).to(dev) for f in
                 ("observations", "actions", "returns", "discounts", "next_observations", "weights")]
        self.stacked.reset_noise()
        self.stacked.reset_noise(target=True)
        m0 = self.models[0]
        losses, ce = self.stacked.update(*stack, lr=m0.lr_schedule(m0._current_progress_remaining))
        ce_np = ce.cpu().numpy()
        for k, (m, b) in enumerate(zip(self.models, batches)):
            m.replay_buffer.update_priorities(b.indices, ce_np[k])
            m._n_updates += 1
            self.last_losses[k] = m.last_losses = {"loss": float(losses[k]), "cross_entropy": float(ce_np[k].mean())}
            m.logger.record("train/n_updates", m._n_updates, exclude="tensorboard")
            m.logger.record("train/beta", m.beta)
            for key, v in m.last_losses.items():
                m.logger.record(f"train/{key}", v)
        if m0._n_updates % m0.target_update_interval == 0:
            self.stacked.sync_target()

    def learn(self) -> None:
        """Train every agent to its ``spec.steps`` (or until a callback stops it: the time limit, a signal); a
        signal during an evaluation raises ``EvaluationStopped`` with the agents' own networks up to date."""
        setups = []
        for r in self.runs:
            # only the evaluation/checkpoint callback: the group has one progress display, not K
            total, cb = r.model._setup_learn(r.remaining, [r.callback], r.reset_num_timesteps, "DER", False)
            setups.append((total, cb))
        # one process, one share of the cores for the group (the agents' own CoreShareCallbacks are not called)
        self.share = CoreShare() if any(r.spec.share_cores for r in self.runs) else None
        if self.share is not None:
            self.share.check()
        for _, cb in setups:
            cb.on_training_start(locals(), globals())
        # a resumed agent's owed update and the step-0 evaluation ran on the agents' own networks: stack them now
        self.stack()
        m0, total = self.models[0], setups[0][0]
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=m0.num_timesteps, unit="step", dynamic_ncols=True,
                       desc=f"lock-step x{len(self.models)}")
        try:
            self._loop(setups, total, bar)
        finally:   # also when a stop abandons an evaluation (EvaluationStopped): the caller checkpoints
            if bar is not None:
                bar.close()
            self.close()
            self.stacked.sync_to_models(self.models)
        for _, cb in setups:
            cb.on_training_end()

    def _loop(self, setups: list, total: int, bar) -> None:
        """Step every agent until agent 0 reaches ``total`` or a callback stops the group."""
        m0 = self.models[0]
        t0, s0, last_log = time.time(), m0.num_timesteps, time.time()
        running = True
        while running and m0.num_timesteps < total:
            if self.share is not None:
                self.share.check()
            actions = self._actions()
            for m, a in zip(self.models, actions):
                m.env.step_async(a)
            results = [m.env.step_wait() for m in self.models]
            due = False
            for m, (total_k, cb), a, (new_obs, rewards, dones, infos) in zip(self.models, setups, actions, results):
                m.num_timesteps += m.n_envs
                cb.update_locals({"new_obs": new_obs, "rewards": rewards, "dones": dones, "infos": infos})
                if not cb.on_step():
                    running = False
                    continue
                m._update_info_buffer(infos, dones)
                m._store_transition(m.replay_buffer, a, new_obs, rewards, dones, infos)
                m._update_current_progress_remaining(m.num_timesteps, total_k)
                m._on_step()
                for done in dones:
                    if done:
                        m._episode_num += 1
                        if self.log_interval and m._episode_num % self.log_interval == 0:
                            m.dump_logs()
            if not running:
                break
            for r in self.runs:
                due = due or r.callback.saves_now()
            if due:  # evaluation / checkpoint use the agents' own networks and optimisers
                self.stacked.sync_to_models(self.models)
            for _, cb in setups:
                cb.on_rollout_end()
            if m0.num_timesteps > m0.learning_starts:
                self._train()
            if bar is not None:
                bar.update(m0.n_envs)
                if m0._n_updates % 50 == 0 and self.last_losses[0]:
                    bar.set_postfix(loss=f"{np.mean([d['loss'] for d in self.last_losses]):.4f}")
            elif time.time() - last_log >= self.log_every:
                last_log = time.time()
                rate = (m0.num_timesteps - s0) / max(last_log - t0, 1e-9)
                eta = (total - m0.num_timesteps) / max(rate, 1e-9) / 60
                mean_loss = np.mean([d.get("loss", np.nan) for d in self.last_losses])
                print(f"step {m0.num_timesteps}/{total}  {rate:.1f} steps/s per agent  ETA {eta:.1f} min  "
                      f"agents={len(self.models)}  mean loss={mean_loss:.4f}", file=sys.stderr, flush=True)
