"""A PPO library for any Gymnasium environment (it knows nothing of transformers).

The names below load on first use, so that reading a light module of this package (the
command line reads rl.config's defaults when it starts) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"PPO": "ppo", "PPOConfig": "config", "CheckpointCallback": "callbacks", "compute_gae": "advantages",
            "evaluate": "evaluation"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = ["PPO", "PPOConfig", "CheckpointCallback", "compute_gae", "evaluate"]
