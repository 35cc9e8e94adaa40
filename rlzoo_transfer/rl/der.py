"""Data-Efficient Rainbow (van Hasselt, Hessel & Aslanides 2019) as an SB3 ``OffPolicyAlgorithm``.

One update per agent step (``train_freq=1, gradient_steps=1``), each:

    a*   = argmax_a sum_k z_k p_online(z_k | s', a)                         (double Q, online net picks)
    m    = Phi(R + gamma^n (1 - done) z, p_target(. | s', a*))              (C51 projection, rl/distributional.py)
    l_i  = - sum_k m_k log p_online(z_k | s_i, a_i)                          (cross-entropy = KL up to a constant)
    loss = mean_i w_i l_i + sum(aux losses of the network)                   (w: PER importance weights)

priorities <- l_i; the target network is copied every ``target_update_interval`` updates; noise is resampled in
the online and target networks before every update and before every action.  Defaults are DER's (agents/der.yml).
Before ``learning_starts`` actions are uniform random (SB3's warm-up), then greedy w.r.t. the noisy network.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from rlzoo_transfer.rl.buffers import PrioritizedNStepReplay
from rlzoo_transfer.rl.distributional import categorical_target
from rlzoo_transfer.rl.policies import AuxContext, DERPolicy


class DER(OffPolicyAlgorithm):
    """Data-Efficient Rainbow.

    :param policy: ``DERPolicy`` (or "DERPolicy")
    :param env: an SB3 VecEnv (``rlzoo_transfer.envs.make_env``)
    :param learning_rate: Adam learning rate (1e-4)
    :param buffer_size: replay capacity (100k: the whole run)
    :param learning_starts: steps of random play before learning (1600)
    :param batch_size: 32
    :param gamma: 0.99
    :param n_steps: n of the n-step return (20, Kaixhin's DER flags)
    :param train_freq: env steps between updates (1)
    :param gradient_steps: updates per ``train_freq`` (1)
    :param target_update_interval: updates between target copies (2000)
    :param max_grad_norm: gradient-norm clip (10)
    :param priority_exponent: PER alpha (0.5)
    :param priority_weight: PER beta at the start, annealed linearly to 1 over the run (0.4)
    :param reward_clip: rewards clipped to [-c, c] for learning (1)
    :param adam_eps: Adam epsilon (1.5e-4)
    :param compile: ``torch.compile`` the update's loss (pays on long runs, costs a minute of compile time)
    """

    policy_aliases = {"DERPolicy": DERPolicy}

    def __init__(self, policy: str | type[DERPolicy], env, learning_rate: float = 1e-4, buffer_size: int = 100_000,
                 learning_starts: int = 1600, batch_size: int = 32, gamma: float = 0.99, n_steps: int = 20,
                 train_freq: int = 1, gradient_steps: int = 1, target_update_interval: int = 2000,
                 max_grad_norm: float = 10.0, priority_exponent: float = 0.5, priority_weight: float = 0.4,
                 reward_clip: float | None = 1.0, adam_eps: float = 1.5e-4, compile: bool = False,
                 policy_kwargs: dict[str, Any] | None = None, tensorboard_log: str | None = None, verbose: int = 0,
                 seed: int | None = None, device: str | torch.device = "auto", _init_setup_model: bool = True):
        policy_kwargs = dict(policy_kwargs or {})
        # fused Adam: one kernel over all parameters instead of ~10 per tensor (bench: ~10% of the update)
        policy_kwargs.setdefault("optimizer_kwargs", {"eps": adam_eps, "fused": True})
        super().__init__(policy, env, learning_rate, buffer_size=buffer_size, learning_starts=learning_starts,
                         batch_size=batch_size, tau=1.0, gamma=gamma, train_freq=train_freq,
                         gradient_steps=gradient_steps, replay_buffer_class=PrioritizedNStepReplay,
                         replay_buffer_kwargs={"n_steps": n_steps, "gamma": gamma, "alpha": priority_exponent,
                                               "reward_clip": reward_clip, "seed": seed},
                         policy_kwargs=policy_kwargs, tensorboard_log=tensorboard_log, verbose=verbose,
                         device=device, seed=seed, support_multi_env=True, monitor_wrapper=False,
                         sde_support=False, supported_action_spaces=(spaces.Discrete,))
        self.n_step_return = n_steps
        self.target_update_interval = target_update_interval
        self.max_grad_norm = max_grad_norm
        self.priority_exponent, self.priority_weight = priority_exponent, priority_weight
        self.reward_clip, self.adam_eps, self.compile = reward_clip, adam_eps, compile
        self._loss_fn = None
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        self.policy.sync_target()
        self._loss_fn = torch.compile(self._loss, dynamic=False) if self.compile else self._loss

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + ["_loss_fn"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []

    @property
    def beta(self) -> float:
        """PER importance exponent, linear from ``priority_weight`` to 1 over the run."""
        return self.priority_weight + (1.0 - self.priority_weight) * (1.0 - self._current_progress_remaining)

    # --- acting -------------------------------------------------------------------------------------------------
    def _sample_action(self, learning_starts: int, action_noise=None, n_envs: int = 1):
        """Act with a fresh noise sample (training mode: noisy weights), or uniformly during warm-up.

        Not through SB3's ``predict``: it puts the policy in eval mode (mean weights), i.e. no NoisyNet exploration.
        """
        self.policy.set_training_mode(True)
        self.policy.reset_noise()
        if self.num_timesteps < learning_starts:
            actions, buffer_actions = super()._sample_action(learning_starts, action_noise, n_envs)
        else:
            with torch.no_grad():
                q = self.policy.q_values(torch.as_tensor(self._last_obs, device=self.device))
            actions = buffer_actions = q.argmax(dim=1).cpu().numpy()
        self.policy.set_training_mode(False)
        return actions, buffer_actions

    # --- learning -----------------------------------------------------------------------------------------------
    def _loss(self, obs: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor,
              next_obs: torch.Tensor, weights: torch.Tensor, progress: float):
        """The DER loss of one batch: (scalar loss, per-sample cross-entropy (B,), aux losses dict)."""
        pol = self.policy
        support = pol.support
        rows = torch.arange(obs.shape[0], device=obs.device)
        x, x_next = pol.scale(obs), pol.scale(next_obs)
        with torch.no_grad():
            next_action = (pol.q_net(x_next).exp() * support).sum(-1).argmax(1)
            next_probs = pol.q_net_target(x_next)[rows, next_action].exp()
            target = categorical_target(next_probs, returns, discounts, support)
        log_probs = pol.q_net(x)
        ce = -(target * log_probs[rows, actions]).sum(-1)

        def per_sample_loss(lp: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
            return -(target[sub] * lp[torch.arange(len(sub), device=lp.device), actions[sub]]).sum(-1)

        aux = pol.auxiliary_loss(AuxContext(x, actions, target, weights, progress, per_sample_loss))
        loss = (weights * ce).mean()
        for v in aux.values():
            loss = loss + v
        return loss, ce.detach(), aux

    def train(self, gradient_steps: int, batch_size: int) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses, ces = [], []
        if self.replay_buffer.tree.total <= 0:  # no n-step window complete yet (learning_starts < n_steps)
            return
        for _ in range(gradient_steps):
            batch = self.replay_buffer.sample(batch_size, beta=self.beta)
            self.policy.reset_noise()
            self.policy.reset_target_noise()
            loss, ce, aux = self._loss_fn(batch.observations, batch.actions, batch.returns, batch.discounts,
                                          batch.next_observations, batch.weights,
                                          1.0 - self._current_progress_remaining)
            self.policy.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.q_net.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            self.replay_buffer.update_priorities(batch.indices, ce.cpu().numpy())
            self._n_updates += 1
            if self._n_updates % self.target_update_interval == 0:
                self.policy.sync_target()
            losses.append(loss.item())
            ces.append(float(ce.mean()))
        self.last_losses = {"loss": float(np.mean(losses)), "cross_entropy": float(np.mean(ces)),
                            **{k: float(v.detach()) for k, v in aux.items()}}
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/beta", self.beta)
        for k, v in self.last_losses.items():
            self.logger.record(f"train/{k}", v)
        if self._n_updates % 100 < gradient_steps:  # statistics cost a device->host copy: log them sparsely
            for k, v in self.policy.statistics().items():
                self.logger.record(f"stats/{k}", v)

    def learn(self, total_timesteps: int, callback=None, log_interval: int = 4, tb_log_name: str = "DER",
              reset_num_timesteps: bool = True, progress_bar: bool = False):
        return super().learn(total_timesteps=total_timesteps, callback=callback, log_interval=log_interval,
                             tb_log_name=tb_log_name, reset_num_timesteps=reset_num_timesteps,
                             progress_bar=progress_bar)
