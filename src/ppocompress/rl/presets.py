"""Known-good PPO settings per environment, used when the user gives no config.

Values are rl-baselines3-zoo's tuned hyper-parameters (hyperparams/ppo.yml); "lin_x"
there means linear annealing from x, which is anneal_lr / anneal_clip_range here.
"""

from __future__ import annotations

from ppocompress.rl.config import PPOConfig

PRESETS: dict[str, PPOConfig] = {
    "CartPole-v1": PPOConfig(
        n_envs=8,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=1e-3,
        anneal_lr=True,
        clip_range=0.2,
        anneal_clip_range=True,
    ),
}


def config_for(env_id: str) -> PPOConfig:
    """The preset for env_id if there is one, else the general defaults."""
    return PPOConfig.from_dict(PRESETS[env_id].to_dict()) if env_id in PRESETS else PPOConfig()
