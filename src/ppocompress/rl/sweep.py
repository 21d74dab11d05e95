"""Hyper-parameter search for PPO: a grid or random trials over a space of settings,
each trial a full training run on Ray Tune, ranked by the deterministic evaluation return.

The trials are drawn here, not by Tune (which only runs them, one CPU each), so the same
seed gives the same trials on any cluster and the drawing is testable without Ray. Every
trial trains with the sweep's seed: trials differ only in their settings.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ppocompress.cluster import connect
from ppocompress.errors import UserError
from ppocompress.fileio import read_json_object
from ppocompress.rl.config import PPOConfig
from ppocompress.rl.evaluation import EVALUATION_SEED_OFFSET, evaluate
from ppocompress.rl.ppo import PPO

SWEEPS = ("grid", "random")
TERMINAL_COLUMNS = 80
SIGNIFICANT_DIGITS = 3  # of a randomly drawn float setting, so tables and configs read cleanly
TRIAL_METRICS = ("mean_return", "std_return", "seconds")  # what a trial reports, in train_trial's order


@dataclass(frozen=True)
class Setting:
    """One PPOConfig field the sweep varies: `values` (the grid's, and what random trials
    pick among) or a range [low, high] that random trials sample (log-uniformly if `log`)."""

    name: str
    values: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    def draw(self, rng: np.random.Generator, integer: bool):
        if self.values:
            return self.values[int(rng.integers(len(self.values)))]
        low, high = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        value = float(rng.uniform(low, high))
        value = math.exp(value) if self.log else value
        return int(round(value)) if integer else float(f"{value:.{SIGNIFICANT_DIGITS}g}")


# Learning rate, clip range, rollout length, entropy coefficient, GAE lambda, epochs: the
# grid values bracket the usual defaults; random trials sample the wider ranges.
DEFAULT_SPACE = {
    "grid": (
        Setting("learning_rate", values=(1e-4, 3e-4, 1e-3)),
        Setting("clip_range", values=(0.1, 0.2, 0.3)),
        Setting("n_steps", values=(32, 128, 512)),
        Setting("ent_coef", values=(0.0, 0.01)),
        Setting("gae_lambda", values=(0.8, 0.95)),
        Setting("n_epochs", values=(4, 10, 20)),
    ),
    "random": (
        Setting("learning_rate", low=1e-5, high=3e-3, log=True),
        Setting("clip_range", low=0.05, high=0.4),
        Setting("n_steps", values=(16, 32, 64, 128, 256, 512)),
        Setting("ent_coef", low=0.0, high=0.02),
        Setting("gae_lambda", low=0.8, high=1.0),
        Setting("n_epochs", low=3, high=20),
    ),
}

SPACE_HINT = ('a JSON object of PPOConfig fields, each a list of values (e.g. "n_epochs": [4, 10]) or a range '
              '(e.g. "learning_rate": {"low": 1e-5, "high": 1e-3, "log": true})')


def load_space(kind: str, path: Path | None = None) -> tuple[Setting, ...]:
    """The default space of `kind`, with the settings a JSON file gives replacing or adding to it."""
    if kind not in SWEEPS:
        raise UserError(f"unknown sweep {kind!r}; use grid or random")
    settings = {s.name: s for s in DEFAULT_SPACE[kind]}
    if path is None:
        return tuple(settings.values())
    fields = PPOConfig.__dataclass_fields__
    for name, spec in read_json_object(path, "space file", f"pass {SPACE_HINT}").items():
        if name not in fields:
            raise UserError(f"space file {path}: {name!r} is not a PPOConfig field; valid: {', '.join(sorted(fields))}")
        if isinstance(spec, list) and spec:
            settings[name] = Setting(name, values=tuple(spec))
        elif isinstance(spec, dict) and set(spec) <= {"low", "high", "log"} and {"low", "high"} <= set(spec):
            low, high, log = spec["low"], spec["high"], spec.get("log", False)
            if kind == "grid":
                raise UserError(f"space file {path}: {name} is a range, which a grid cannot enumerate; give a list of values")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
                raise UserError(f"space file {path}: {name} needs numbers low < high, got {low!r} and {high!r}")
            if fields[name].type not in ("int", "float"):
                raise UserError(f"space file {path}: {name} is not numeric; give a list of values")
            if log and low <= 0:
                raise UserError(f"space file {path}: {name} is log-scaled, so low must be > 0, got {low}")
            settings[name] = Setting(name, low=float(low), high=float(high), log=bool(log))
        else:
            raise UserError(f"space file {path}: {name} must be a non-empty list or {{\"low\", \"high\"[, \"log\"]}}; "
                            f"got {spec!r}")
    return tuple(settings.values())


def grid_size(space: tuple[Setting, ...]) -> int:
    return math.prod(len(s.values) for s in space)


def draw_trials(kind: str, space: tuple[Setting, ...], base: PPOConfig, trials: int | None, seed: int) -> list[dict]:
    """The settings of each trial, each checked as a whole PPOConfig. grid: every
    combination (`trials`, if given, must be their number); random: `trials` draws."""
    if kind == "grid":
        size = grid_size(space)
        if trials is not None and trials != size:
            raise UserError(f"the grid has {size} combinations, not --trials {trials}; leave --trials out, "
                            "or change the space with --space FILE")
        drawn = [dict(zip([s.name for s in space], combination)) for combination in itertools.product(*(s.values for s in space))]
    else:
        if trials is None or trials < 1:
            raise UserError(f"a random sweep needs --trials >= 1, got {trials}")
        rng = np.random.default_rng(seed)
        integer = {name for name, f in PPOConfig.__dataclass_fields__.items() if f.type == "int"}
        drawn = [{s.name: s.draw(rng, s.name in integer) for s in space} for _ in range(trials)]
    for settings in drawn:
        PPOConfig.from_dict({**base.to_dict(), **settings})
    return drawn


@dataclass
class Trial:
    index: int
    settings: dict  # the swept PPOConfig fields and their values
    mean_return: float = float("nan")  # deterministic evaluation after training
    std_return: float = float("nan")
    seconds: float = float("nan")  # training, on one CPU
    error: str | None = None


@dataclass
class SweepResult:
    env_id: str
    kind: str
    steps: int
    seed: int
    base: PPOConfig
    trials: list[Trial] = field(default_factory=list)

    def ranked(self) -> list[Trial]:
        """Best first: highest return, then lower spread, then quicker; failed trials last."""
        return sorted(self.trials, key=lambda t: (t.error is not None, -_or(t.mean_return), _or(t.std_return, math.inf),
                                                  _or(t.seconds, math.inf), t.index))

    def best_config(self) -> PPOConfig:
        best = self.ranked()[0]
        if best.error is not None:
            raise UserError(f"every trial failed; the first: {best.error}")
        return PPOConfig.from_dict({**self.base.to_dict(), **best.settings})

    def csv(self) -> str:
        names = list(self.trials[0].settings) if self.trials else []
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["rank", "trial", *names, *TRIAL_METRICS, "error"])
        for rank, t in enumerate(self.ranked(), start=1):
            settings = (t.settings[n] for n in names)
            writer.writerow([rank, t.index, *settings, t.mean_return, t.std_return, t.seconds, t.error or ""])
        return out.getvalue()

    def table(self, rows: int = 10) -> str:
        """The best `rows` trials in 80 columns: as many settings as fit (sweep.csv has all)."""
        names = list(self.trials[0].settings) if self.trials else []
        shown = names[:(TERMINAL_COLUMNS - 24) // 9]
        lines = [f"{self.kind} sweep of {len(self.trials)} trials on {self.env_id}, {self.steps} steps each, seed {self.seed}",
                 f"{'rank':>4} {'return':>13} " + " ".join(f"{_SHORT.get(n, n)[:8]:>8}" for n in shown) + f" {'s':>5}"]
        for rank, t in enumerate(self.ranked()[:rows], start=1):
            score = "failed" if t.error else f"{t.mean_return:.1f} ± {t.std_return:.1f}"
            values = " ".join(f"{_format(t.settings[n]):>8}" for n in shown)
            lines.append(f"{rank:>4} {score:>13} {values} {t.seconds:>5.0f}")
        if len(shown) < len(names):
            lines.append(f"(and {', '.join(names[len(shown):])}: see sweep.csv)")
        return "\n".join(lines)


_SHORT = {"learning_rate": "lr", "clip_range": "clip", "ent_coef": "ent", "gae_lambda": "lambda", "n_epochs": "epochs"}


def _format(value) -> str:
    return f"{value:.{SIGNIFICANT_DIGITS}g}" if isinstance(value, float) else str(value)


def _or(value: float, default: float = -math.inf) -> float:
    return default if math.isnan(value) else value


def train_trial(env_id: str, config: PPOConfig, steps: int, seed: int, eval_episodes: int) -> tuple[float, float, float]:
    """One trial: (mean return, its spread, training seconds), on one thread."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    agent = PPO(env_id, config, seed=seed)
    agent.learn(steps, progress_bar=False)
    seconds = time.perf_counter() - started
    mean_return, std_return = evaluate(agent, env_id, episodes=eval_episodes, seed=seed + EVALUATION_SEED_OFFSET)
    return mean_return, std_return, seconds


def run_sweep(env_id: str, kind: str, drawn: list[dict], base: PPOConfig, steps: int, seed: int, eval_episodes: int,
              address: str | None, on_trial: Callable[[Trial], None] | None = None) -> SweepResult:
    """Runs every trial on Ray Tune (a local cluster unless `address` names one), one CPU each."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's newer console output ignores verbose=0
    result = SweepResult(env_id, kind, steps, seed, base, [Trial(i, settings) for i, settings in enumerate(drawn)])
    configs = [{**base.to_dict(), **settings} for settings in drawn]
    with connect(address) as cpus, tempfile.TemporaryDirectory(prefix="ppocompress-sweep-") as storage:
        from ray import tune

        def trainable(params: dict) -> None:
            config = PPOConfig.from_dict(configs[params["trial"]])
            tune.report(dict(zip(TRIAL_METRICS, train_trial(env_id, config, steps, seed, eval_episodes))))

        def record(index: int, metrics: dict) -> Trial:
            trial = result.trials[index]
            trial.mean_return, trial.std_return, trial.seconds = (float(metrics[k]) for k in TRIAL_METRICS)
            return trial

        class Progress(tune.Callback):
            """Tune pickles its callbacks into the experiment's files; what is pickled
            reports nowhere (this one lives in the driver, holding the progress bar)."""

            def on_trial_result(self, iteration, trials, trial, result, **info):
                done = record(trial.config["trial"], result)
                if on_trial is not None:
                    on_trial(done)

            def __reduce__(self):
                return tune.Callback, ()

        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"trial": tune.grid_search(list(range(len(drawn))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=max(1, cpus)),
            run_config=tune.RunConfig(storage_path=storage, name="sweep", verbose=0, callbacks=[Progress()]),
        )
        for outcome in tuner.fit():
            index = outcome.config["trial"]
            if outcome.error is not None:
                result.trials[index].error = str(outcome.error).strip().splitlines()[-1]
            else:
                record(index, outcome.metrics)
    return result
