"""PPO hyper-parameters as one dataclass that round-trips through JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppocompress.errors import UserError
from ppocompress.fileio import read_json_object

# Deterministic episodes a trained agent is scored on unless told otherwise: after a run,
# after each trial of a sweep, and by `ppocompress rl` (which reads it here, without torch).
EVALUATION_EPISODES = 20


@dataclass
class PPOConfig:
    """Everything that shapes a PPO run. Defaults follow Stable-Baselines3 / CleanRL."""

    # Data collection
    n_envs: int = 4
    n_steps: int = 128  # steps per environment per rollout
    vectorization: str = "sync"  # "sync" or "async" (one process per env)

    # Optimisation
    learning_rate: float = 3e-4
    anneal_lr: bool = True  # linear decay to 0 over the learn() call
    batch_size: int = 128  # minibatch size
    n_epochs: int = 4
    max_grad_norm: float = 0.5

    # Returns and advantages
    gamma: float = 0.99
    gae_lambda: float = 0.95
    normalize_advantage: bool = True  # per minibatch

    # Losses
    clip_range: float = 0.2
    anneal_clip_range: bool = False  # linear decay of epsilon, as rl-zoo's "lin_0.2"
    clip_range_vf: float | None = None  # value clipping around the rollout's value; None = off
    ent_coef: float = 0.0
    vf_coef: float = 0.5

    # KL control: either, both or neither
    target_kl: float | None = None  # early-stop the epochs when approx KL (k3) exceeds this
    kl_penalty_target: float | None = None  # adaptive KL penalty aims at this KL; None = off
    kl_coef: float = 0.2  # initial penalty coefficient, doubled/halved against the target

    # Networks
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"  # "tanh" or "relu"
    shared_network: bool = False  # one MLP body for actor and critic
    log_std_init: float = 0.0  # Box actions

    # Input / reward conditioning (continuous control)
    normalize_observations: bool = False
    scale_rewards: bool = False
    clip_normalized: float = 10.0

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        self.validate()

    def validate(self) -> None:
        """Reject settings that cannot work, with a message that says which and why."""
        positive_ints = ("n_envs", "n_steps", "batch_size", "n_epochs")
        for name in positive_ints:
            if int(getattr(self, name)) < 1:
                raise UserError(f"PPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise UserError(f"PPOConfig.learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise UserError("PPOConfig.gamma and gae_lambda must lie in [0, 1]")
        if self.clip_range <= 0:
            raise UserError(f"PPOConfig.clip_range must be > 0, got {self.clip_range}")
        for name in ("target_kl", "kl_penalty_target", "clip_range_vf"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"PPOConfig.{name} must be > 0 or null, got {value}")
        if self.vectorization not in ("sync", "async"):
            raise UserError(f"PPOConfig.vectorization must be 'sync' or 'async', got {self.vectorization!r}")
        if self.activation not in ("tanh", "relu"):
            raise UserError(f"PPOConfig.activation must be 'tanh' or 'relu', got {self.activation!r}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise UserError(f"PPOConfig.hidden_sizes needs at least one layer, each of width >= 1, got {list(self.hidden_sizes)}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hidden_sizes"] = list(self.hidden_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PPOConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown PPO config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        for f in dataclasses.fields(cls):
            if f.name in data:
                _check_type(f.name, f.type, data[f.name])
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "PPOConfig":
        hint = "pass a JSON object of PPOConfig fields, or leave --config out"
        return cls.from_dict(read_json_object(path, "config file", hint))


_KINDS = {  # a field's annotation -> (does a JSON value fit it, what to tell the user)
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "tuple[int, ...]": (lambda v: isinstance(v, list) and all(isinstance(h, int) and not isinstance(h, bool) for h in v),
                        "a list of whole numbers, e.g. [64, 64]"),
}


def _check_type(name: str, annotation: str, value: Any) -> None:
    """A config file's value against the field's type, so that a wrong one is named as the
    user wrote it instead of failing later inside the training loop."""
    optional = annotation.endswith(" | None")
    fits, wanted = _KINDS[annotation.removesuffix(" | None")]
    if not (fits(value) or (optional and value is None)):
        raise UserError(f"PPO config {name} must be {wanted}{' or null' if optional else ''}, got {value!r}")
