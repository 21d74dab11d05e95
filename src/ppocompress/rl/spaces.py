"""What PPO needs to know about Gymnasium spaces: how to feed observations to a
network, what kind of action head to build, and how to store a space in JSON so a
saved agent can be rebuilt without its environment."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from ppocompress.errors import UserError

SUPPORTED_OBSERVATIONS = (spaces.Box, spaces.Discrete, spaces.MultiBinary)
SUPPORTED_ACTIONS = (spaces.Discrete, spaces.MultiDiscrete, spaces.Box)


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    if not isinstance(observation_space, SUPPORTED_OBSERVATIONS):
        raise UserError(
            f"observation space {observation_space} is not supported; use Box, Discrete or MultiBinary "
            "(flatten Dict/Tuple observations with gymnasium.wrappers.FlattenObservation)"
        )
    if not isinstance(action_space, SUPPORTED_ACTIONS):
        raise UserError(f"action space {action_space} is not supported; use Discrete, MultiDiscrete or Box")
    if isinstance(action_space, spaces.Box) and len(action_space.shape) != 1:
        raise UserError(f"Box action space must be 1-D, got shape {action_space.shape}")


def observation_dim(space: spaces.Space) -> int:
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    return int(np.prod(space.shape))


def encode_observations(space: spaces.Space, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A batch of observations as a float32 (batch, dim) tensor; Discrete becomes one-hot."""
    obs = torch.as_tensor(obs)
    if isinstance(space, spaces.Discrete):
        return torch.nn.functional.one_hot(obs.long().reshape(-1) - int(space.start), int(space.n)).float()
    return obs.reshape(obs.shape[0], -1).float()


def is_batched_observation(space: spaces.Space, obs: Any) -> bool:
    """True when obs holds several observations (predict accepts one or many)."""
    shape = np.shape(obs)
    single = () if isinstance(space, spaces.Discrete) else space.shape
    return len(shape) == len(single) + 1


def action_logit_sizes(space: spaces.Space) -> list[int] | None:
    """Sizes of the independent categoricals, or None for a continuous (Box) space."""
    if isinstance(space, spaces.Discrete):
        return [int(space.n)]
    if isinstance(space, spaces.MultiDiscrete):
        return [int(n) for n in np.asarray(space.nvec).reshape(-1)]
    return None


def to_env_actions(space: spaces.Space, actions: torch.Tensor) -> np.ndarray:
    """Network actions (batch, k) in the form env.step expects; Box actions are clipped
    to bounds here while the unclipped sample is what PPO stores and learns from."""
    if isinstance(space, spaces.Discrete):
        return actions[:, 0].numpy() + int(space.start)
    if isinstance(space, spaces.MultiDiscrete):
        start = np.asarray(getattr(space, "start", 0)).reshape(-1)
        return (actions.numpy() + start).reshape((-1, *space.shape)).astype(space.dtype)
    return np.clip(actions.numpy(), space.low, space.high).astype(space.dtype)


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "nvec": np.asarray(space.nvec).tolist(),
            "start": np.asarray(space.start).tolist(),
            "dtype": str(space.dtype),
        }
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "low": _json_floats(space.low),
            "high": _json_floats(space.high),
            "dtype": str(space.dtype),
        }
    raise UserError(f"cannot store space {space}")


def space_from_json(data: dict[str, Any]) -> spaces.Space:
    kind = data.get("type")
    if kind == "Discrete":
        return spaces.Discrete(data["n"], start=data.get("start", 0))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(data["nvec"], dtype=np.dtype(data.get("dtype", "int64")), start=data.get("start"))
    if kind == "MultiBinary":
        return spaces.MultiBinary(data["n"])
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        # Infinite bounds are stored as the strings "inf"/"-inf", which numpy parses back.
        return spaces.Box(np.asarray(data["low"], dtype=dtype), np.asarray(data["high"], dtype=dtype), dtype=dtype)
    raise UserError(f"saved agent names an unknown space type {kind!r}")


def _json_floats(values: np.ndarray) -> list:
    """Bounds as strict JSON: non-finite floats become strings ("inf", "-inf")."""
    return np.vectorize(lambda v: float(v) if np.isfinite(v) else str(float(v)), otypes=[object])(values).tolist()
