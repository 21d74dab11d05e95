"""Callbacks for PPO.learn: a callback is any callable (agent, metrics) -> bool | None."""

from __future__ import annotations

from pathlib import Path


class CheckpointCallback:
    """Saves the agent to `directory` every `every_steps` environment steps (atomically,
    so an interrupted run always leaves the last complete checkpoint)."""

    def __init__(self, directory: str | Path, every_steps: int):
        self.directory = Path(directory)
        self.every_steps = int(every_steps)
        self._next = self.every_steps

    def __call__(self, agent, metrics: dict[str, float]) -> None:
        if agent.num_timesteps >= self._next:
            agent.save(self.directory)
            self._next = (agent.num_timesteps // self.every_steps + 1) * self.every_steps
