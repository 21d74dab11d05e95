"""Turning what the user passes (an env id, an env, a vector env) into a Gymnasium
vector env, and reading invalid-action masks from it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from ppocompress.errors import UserError


def check_env_id(env_id: str) -> None:
    """Fail early, in one line, on an id Gymnasium does not know."""
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise UserError(f"unknown environment id {env_id!r} ({exc}); list ids with gymnasium.pprint_registry()") from None


def check_env_builds(env_id: str) -> None:
    """check_env_id, then one env built and closed: an env whose optional dependency is
    missing fails here, before a run starts, not mid-run. Once per command, not per env made."""
    check_env_id(env_id)
    try:
        gym.make(env_id).close()
    except gym.error.DependencyNotInstalled as exc:
        raise UserError(f"environment {env_id!r} needs a package that is not installed: {str(exc).strip()}") from None


def make_vector_env(env: str | gym.Env | VectorEnv, n_envs: int, vectorization: str) -> VectorEnv:
    """A vector env with n_envs copies. Envs we build use SAME_STEP autoreset, where the
    final observation of an episode arrives in the step that ends it; vector envs the user
    builds may use NEXT_STEP too (the rollout handles both)."""
    if isinstance(env, VectorEnv):
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode == AutoresetMode.DISABLED:
            raise UserError("vector envs with autoreset_mode=DISABLED are not supported; use NEXT_STEP or SAME_STEP")
        return env
    if isinstance(env, str):
        check_env_id(env)
        return gym.make_vec(
            env,
            num_envs=n_envs,
            vectorization_mode=vectorization,
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        )
    if isinstance(env, gym.Env):
        if n_envs == 1 and vectorization == "sync":
            return gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=AutoresetMode.SAME_STEP)
        if env.spec is None:
            raise UserError(
                "an env instance can only be copied if it was made with gym.make; pass n_envs=1, an env id, or a vector env"
            )
        spec = env.spec
        factories = [lambda: gym.make(spec) for _ in range(n_envs)]
        vector_cls = gym.vector.SyncVectorEnv if vectorization == "sync" else gym.vector.AsyncVectorEnv
        return vector_cls(factories, autoreset_mode=AutoresetMode.SAME_STEP)
    raise UserError(f"expected a Gymnasium env, vector env or env id, got {type(env).__name__}")


def autoreset_mode(vec_env: VectorEnv) -> AutoresetMode:
    return vec_env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)


class ActionMasks:
    """Reads invalid-action masks, from info["action_mask"] or an env's action_masks() method.

    A mask is a boolean vector over all logits (for MultiDiscrete, the per-dimension
    masks concatenated, as in sb3-contrib's MaskablePPO); True means allowed.
    """

    def __init__(self, vec_env: VectorEnv, logit_sizes: list[int] | None):
        self.vec_env = vec_env
        self.logit_sizes = logit_sizes
        self.n_logits = None if logit_sizes is None else sum(logit_sizes)
        self.has_method: bool | None = None  # decided on the first read, after reset

    def _call_action_masks(self) -> np.ndarray | None:
        if self.has_method is None:
            # Ask rather than try: a failed call shuts down AsyncVectorEnv workers.
            self.has_method = all(self.vec_env.call("has_wrapper_attr", "action_masks"))
        if not self.has_method:
            return None
        return np.stack([np.asarray(m, dtype=bool).reshape(-1) for m in self.vec_env.call("action_masks")])

    def read(self, infos: dict, ignored: np.ndarray | None = None) -> torch.Tensor | None:
        """Masks for the current observations; rows in `ignored` (envs whose next action
        the env will discard, as after an episode's end under NEXT_STEP) allow everything."""
        if self.n_logits is None:
            return None
        raw = np.asarray(infos["action_mask"], dtype=bool) if "action_mask" in infos else self._call_action_masks()
        if raw is None:
            return None
        masks = torch.from_numpy(raw.reshape(self.vec_env.num_envs, -1).copy())
        if ignored is not None and ignored.any():
            masks[torch.from_numpy(ignored)] = True
        if masks.shape[1] != self.n_logits:
            raise UserError(f"action mask has {masks.shape[1]} entries per env but the action space has {self.n_logits}")
        for part in torch.split(masks, self.logit_sizes, dim=1):
            if not part.any(dim=1).all():
                raise UserError("an action mask allows no action at all; every state needs at least one valid action")
        return masks
