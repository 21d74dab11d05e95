"""A PPO library for any Gymnasium environment (it knows nothing of transformers)."""

from ppocompress.rl.advantages import compute_gae
from ppocompress.rl.callbacks import CheckpointCallback
from ppocompress.rl.config import PPOConfig
from ppocompress.rl.evaluation import evaluate
from ppocompress.rl.ppo import PPO

__all__ = ["PPO", "PPOConfig", "CheckpointCallback", "compute_gae", "evaluate"]
