"""Proximal Policy Optimization (Schulman et al., 2017) with the details that matter in
practice (Huang et al., "The 37 implementation details of PPO"). The update reads top
to bottom in `_update`; everything else is collection, bookkeeping and persistence."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ppocompress.errors import UserError
from ppocompress.fileio import atomic_path, atomic_write_text, read_json_object
from ppocompress.rl.config import PPOConfig
from ppocompress.rl.envs import make_vector_env
from ppocompress.rl.flat_parameters import FlatAdam, FlatParameters
from ppocompress.rl.logger import TrainingLogger
from ppocompress.rl.losses import (
    approx_kl,
    clip_grad_norm,
    clipped_surrogate_loss,
    normalize,
    value_loss,
)
from ppocompress.rl.normalization import RewardScaler
from ppocompress.rl.policy import ActorCritic, one_thread
from ppocompress.rl.rollout import Batch, RolloutCollector
from ppocompress.rl.spaces import (
    check_spaces,
    is_batched_observation,
    space_from_json,
    space_to_json,
    to_env_actions,
)

SAVE_FORMAT = "ppocompress.rl.PPO/1"
Callback = Callable[["PPO", dict[str, float]], bool | None]
ADAM_EPS = 1e-5  # CleanRL's and Stable-Baselines3's (torch's default is 1e-8)
KL_TOLERANCE = 1.5  # the adaptive KL penalty changes its coefficient when the KL is off its target by this factor
METRICS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm")  # per-minibatch means


class PPO:
    """`PPO(env, config, seed).learn(steps)`, then `predict`, `save` and `PPO.load`.

    env may be an env id, a Gymnasium env or a vector env; None is allowed only for
    agents that will just predict (see `load`).
    """

    def __init__(self, env: str | gym.Env | VectorEnv | None, config: PPOConfig | None = None, seed: int = 0):
        self.config = config or PPOConfig()
        self.seed = int(seed)
        self.env = None if env is None else make_vector_env(env, self.config.n_envs, self.config.vectorization)
        if self.env is None:
            return  # load() builds the networks from the saved spaces
        self._build(self.env.single_observation_space, self.env.single_action_space)

    def _build(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        check_spaces(observation_space, action_space)
        self.observation_space = observation_space
        self.action_space = action_space
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.policy = ActorCritic(observation_space, action_space, self.config)
        self.flat = FlatParameters(self.policy)
        self.optimizer = FlatAdam(self.flat, lr=self.config.learning_rate, eps=ADAM_EPS)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.kl_coef = self.config.kl_coef
        self.num_timesteps = 0
        self.reward_scaler: RewardScaler | None = None
        self._collector: RolloutCollector | None = None

    # ------------------------------------------------------------------ training
    def learn(
        self,
        total_steps: int,
        callback: Callback | None = None,
        progress_bar: bool = False,
        log_csv: str | Path | None = None,
    ) -> "PPO":
        """Trains for total_steps more environment steps (rounded up to whole rollouts).

        callback(agent, metrics) runs after every update; returning False stops training.
        """
        if self.env is None:
            raise UserError("this agent has no environment; call set_env(env) before learn()")
        if total_steps < 0:
            raise UserError(f"total_steps must be >= 0, got {total_steps}")
        cfg = self.config
        if self._collector is None:
            self._collector = self._new_collector()
        steps_per_update = cfg.n_steps * self.env.num_envs
        n_updates = math.ceil(total_steps / steps_per_update)
        logger = TrainingLogger(n_updates * steps_per_update, log_csv, progress_bar)
        try:
            for update in range(n_updates):
                remaining = 1.0 - update / n_updates
                learning_rate = cfg.learning_rate * (remaining if cfg.anneal_lr else 1.0)
                clip_range = cfg.clip_range * (remaining if cfg.anneal_clip_range else 1.0)
                self.optimizer.lr = learning_rate

                started = time.perf_counter()
                batch = self._collector.collect(cfg.n_steps, cfg.gamma, cfg.gae_lambda)
                with one_thread():
                    metrics = self._update(batch, clip_range)
                self.num_timesteps += steps_per_update

                metrics.update(
                    update=update + 1,
                    steps=self.num_timesteps,
                    learning_rate=learning_rate,
                    clip_range=clip_range,
                    kl_coef=self.kl_coef,
                    steps_per_second=steps_per_update / (time.perf_counter() - started),
                    episode_return_mean=_mean(self._collector.recent_returns),
                    episode_length_mean=_mean(self._collector.recent_lengths),
                )
                logger.log(metrics, (update + 1) * steps_per_update)
                if callback is not None and callback(self, metrics) is False:
                    break
        finally:
            logger.close()
        return self

    def _new_collector(self) -> RolloutCollector:
        """A collector for the agent's envs (new, loaded, or set since): the reward scaler, if
        the config scales rewards, keeps its statistics but starts the new envs' returns at 0."""
        if self.config.scale_rewards and self.reward_scaler is None:
            self.reward_scaler = RewardScaler(self.env.num_envs, self.config.gamma, self.config.clip_normalized)
        elif self.reward_scaler is not None:
            self.reward_scaler.start_episodes(self.env.num_envs)
        return RolloutCollector(self.env, self.policy, self.generator, self.reward_scaler, self.seed)

    def _update(self, batch: Batch, clip_range: float) -> dict[str, float]:
        cfg = self.config
        per_minibatch: list[torch.Tensor] = []  # METRICS of every minibatch, read once at the end
        first_ratio_deviation = float("nan")
        epochs_run = 0
        early_stop = False
        single_minibatch = cfg.batch_size >= len(batch)
        if single_minibatch and cfg.normalize_advantage:
            # One minibatch per epoch is the same minibatch every epoch: normalise it once.
            batch = dataclasses.replace(batch, advantages=normalize(batch.advantages))
        for _epoch in range(cfg.n_epochs):
            # With one minibatch per epoch the order is irrelevant: skip the shuffle.
            order = None if single_minibatch else torch.randperm(len(batch), generator=self.generator)
            for start in range(0, len(batch), cfg.batch_size):
                mb = batch if order is None else batch.select(order[start : start + cfg.batch_size])
                dist, values = self.policy(mb.features, mb.masks)
                log_ratio = dist.log_prob(mb.actions) - mb.log_probs
                ratio = log_ratio.exp()
                kl = approx_kl(log_ratio.detach())
                if not per_minibatch:
                    first_ratio_deviation = (ratio - 1.0).abs().max().item()
                if cfg.target_kl is not None and kl.item() > cfg.target_kl:
                    early_stop = True  # this step would move the policy too far: skip it and stop
                    break

                normalize_now = cfg.normalize_advantage and not single_minibatch  # else done above
                advantages = normalize(mb.advantages) if normalize_now else mb.advantages
                policy_loss = clipped_surrogate_loss(ratio, advantages, clip_range)
                critic_loss = value_loss(values, mb.values, mb.returns, cfg.clip_range_vf)
                loss = policy_loss + cfg.vf_coef * critic_loss
                # Terms with a zero weight stay out of the graph: at PPO's sizes every
                # autograd node costs more than its arithmetic.
                with torch.set_grad_enabled(cfg.ent_coef != 0.0):
                    entropy = dist.entropy().mean()
                if cfg.ent_coef != 0.0:
                    loss = loss - cfg.ent_coef * entropy
                if cfg.kl_penalty_target is not None:
                    loss = loss + self.kl_coef * approx_kl(log_ratio)

                self.flat.zero_grad()
                loss.backward()
                grad_norm = clip_grad_norm(self.flat.param.grad, cfg.max_grad_norm)
                self.optimizer.step()

                clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean()
                per_minibatch.append(torch.stack([policy_loss, critic_loss, entropy, kl, clip_fraction, grad_norm]).detach())
            if early_stop:
                break
            epochs_run += 1

        if cfg.kl_penalty_target is not None:
            self._adapt_kl_coef(batch)
        metrics = dict(zip(METRICS, torch.stack(per_minibatch).double().mean(dim=0).tolist())) if per_minibatch else {}
        metrics.update(
            epochs_run=epochs_run,
            first_ratio_deviation=first_ratio_deviation,
            explained_variance=_explained_variance(batch.values, batch.returns),
        )
        return metrics

    def _adapt_kl_coef(self, batch: Batch) -> None:
        """Adaptive KL penalty (Schulman et al., 2017, sec. 4): double the coefficient when
        the update overshot the target KL by KL_TOLERANCE, halve it when it undershot by as much."""
        with torch.no_grad():
            dist, _ = self.policy(batch.features, batch.masks)
            kl = approx_kl(dist.log_prob(batch.actions) - batch.log_probs).item()
        target = self.config.kl_penalty_target
        if kl > KL_TOLERANCE * target:
            self.kl_coef *= 2.0
        elif kl < target / KL_TOLERANCE:
            self.kl_coef /= 2.0

    # ------------------------------------------------------------------ acting
    def predict(self, observation: Any, deterministic: bool = False, action_mask: Any = None) -> np.ndarray:
        """Action(s) for one observation or a batch; masked actions are never chosen."""
        batched = is_batched_observation(self.observation_space, observation)
        obs = np.asarray(observation) if batched else np.asarray(observation)[None]
        mask = None
        if action_mask is not None:
            mask = torch.as_tensor(np.asarray(action_mask, dtype=bool)).reshape(obs.shape[0], -1)
        with torch.inference_mode(), one_thread():
            dist, _ = self.policy(self.policy.features(obs), mask)
            actions = dist.mode() if deterministic else dist.sample(self.generator)
        env_actions = to_env_actions(self.action_space, actions)
        return env_actions if batched else env_actions[0]

    def set_env(self, env: str | gym.Env | VectorEnv) -> None:
        vec_env = make_vector_env(env, self.config.n_envs, self.config.vectorization)
        if vec_env.single_observation_space != self.observation_space or vec_env.single_action_space != self.action_space:
            raise UserError("the new environment's spaces differ from the ones this agent was trained on")
        self.env = vec_env
        self._collector = None

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Writes model.safetensors, training_state.safetensors and config.json (no pickle)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": SAVE_FORMAT,
            "config": self.config.to_dict(),
            "seed": self.seed,
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "num_timesteps": self.num_timesteps,
            "kl_coef": self.kl_coef,
        }
        with atomic_path(directory / "model.safetensors") as tmp:
            # clone: the parameters are views of one tensor, which safetensors refuses to save
            save_file({k: v.clone() for k, v in self.policy.state_dict().items()}, str(tmp))
        with atomic_path(directory / "training_state.safetensors") as tmp:
            save_file(self._training_state(), str(tmp))
        atomic_write_text(directory / "config.json", json.dumps(meta, indent=2, allow_nan=False))

    def _training_state(self) -> dict[str, torch.Tensor]:
        """Adam moments (per parameter, as `adam.<index>.<key>`) and the reward scaler, so
        learn() resumes where it stopped."""
        state = {f"adam.{name}": value for name, value in self.optimizer.per_parameter_state().items()}
        if self.reward_scaler is not None:
            for key, value in self.reward_scaler.state_dict().items():
                state[f"reward_scaler.{key}"] = value.clone()
        return state

    @classmethod
    def load(cls, directory: str | Path, env: str | gym.Env | VectorEnv | None = None) -> "PPO":
        directory = Path(directory)
        meta = read_json_object(directory / "config.json", "agent file", "pass a directory written by PPO.save")
        if meta.get("format") != SAVE_FORMAT:
            raise UserError(f"{directory} does not hold a saved PPO agent (format {meta.get('format')!r})")
        try:
            agent = cls(None, PPOConfig.from_dict(meta["config"]), seed=meta["seed"])
            agent._build(space_from_json(meta["observation_space"]), space_from_json(meta["action_space"]))
            agent.policy.load_state_dict(load_file(str(directory / "model.safetensors")))
            agent.num_timesteps = int(meta["num_timesteps"])
            agent.kl_coef = float(meta["kl_coef"])
            state_path = directory / "training_state.safetensors"
            if state_path.exists():
                agent._restore_training_state(load_file(str(state_path)))
        except (KeyError, TypeError, ValueError, RuntimeError, OSError, SafetensorError) as exc:
            # a file cut short, edited or from another agent: one line, not the loader's traceback
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise UserError(f"the saved PPO agent in {directory} is damaged ({detail}); save it again "
                            f"or pass another agent's directory") from None
        if env is not None:
            agent.set_env(env)
        return agent

    def _restore_training_state(self, state: dict[str, torch.Tensor]) -> None:
        adam = {name.split(".", 1)[1]: value for name, value in state.items() if name.startswith("adam.")}
        if adam:
            self.optimizer.load_per_parameter_state(adam)
        scaler_state = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("reward_scaler.")}
        if scaler_state:
            n_envs = scaler_state["discounted_return"].shape[0]
            self.reward_scaler = RewardScaler(n_envs, self.config.gamma, self.config.clip_normalized)
            self.reward_scaler.load_state_dict(scaler_state)


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 = the critic explains the returns perfectly, 0 = no better than their mean."""
    variance = target.var().item()
    return float("nan") if variance == 0 else 1.0 - (target - predicted).var().item() / variance
