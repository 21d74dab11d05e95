"""The compression task as a Gymnasium environment any RL library can train on.

`ppocompress` registers it as "ppocompress/Compress-v0" with this module's make_env as
the entry point, so `gymnasium.make("ppocompress/Compress-v0", model=..., target_speedup=...)`
builds it. The arguments and their defaults are those of `ppocompress compress`, and the
env is prepared and scored by the job's own code (prepare(), compression_env(),
plan_scorer()): a user trains on the same task the search solves. Nothing is written to
disk beyond the latency table prepare() caches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from types import SimpleNamespace

from ppocompress.search.env import CompressionEnv
from ppocompress.search.prepare import prepare
from ppocompress.search.searching import compression_env, plan_scorer
from ppocompress.search.settings import CompressSettings
from ppocompress.search.state import SearchState

# make_env's defaults are the command's, defined there once
_DEFAULTS = SimpleNamespace(**{field.name: field.default for field in fields(CompressSettings)})


def make_env(model: str | None = _DEFAULTS.model, target_speedup: float | None = _DEFAULTS.target_speedup,
             target_int8_speedup: float | None = _DEFAULTS.target_int8_speedup, target_size: float | None = _DEFAULTS.target_size,
             target_set_speedups: list[float] | None = _DEFAULTS.target_set_speedups,
             target_set_sizes: list[float] | None = _DEFAULTS.target_set_sizes,
             target_set_int8_speedups: list[float] | None = _DEFAULTS.target_set_int8_speedups, cost: str = _DEFAULTS.cost,
             runtime: str = _DEFAULTS.runtime, text: str | Path | None = _DEFAULTS.text, recovery: str = _DEFAULTS.recovery,
             threads: int = _DEFAULTS.threads, trust_remote_code: bool = _DEFAULTS.trust_remote_code,
             log: Callable[[str], None] = print) -> CompressionEnv:
    """A CompressionEnv for `model` (default: the embedded all-MiniLM-L6-v2) and one target,
    or a target set's targets taken in turn by episode (default: those `ppocompress compress`
    searches for the model, see settings.default_target). cost="measured" times the dense model and a latency table on the
    serving runtime first (minutes; the table is cached), "flops" prices by parameters.
    recovery: plans are scored after least-squares recovery when it includes "lsq", as the
    search scores them. Each distinct plan is evaluated once, then its reward is reused.
    A bad argument raises UserError before anything is loaded."""
    settings = CompressSettings(model=model, target_speedup=target_speedup, target_int8_speedup=target_int8_speedup,
                                target_size=target_size, target_set_speedups=target_set_speedups,
                                target_set_sizes=target_set_sizes, target_set_int8_speedups=target_set_int8_speedups, cost=cost,
                                runtime=runtime, text=None if text is None else str(text), recovery=recovery, threads=threads,
                                trust_remote_code=trust_remote_code)
    settings.validate()
    state = SearchState(asdict(settings))  # in memory: it holds the one-off measurements and the evaluations
    prepared = prepare(settings, state, save_state=lambda: None, log=log)
    return compression_env(prepared, settings.targets(), plan_scorer(prepared, state.evaluations, on_new=lambda: None))
