"""`ppocompress compress`: prepare, search, deliver.

1. prepare (prepare.py): model, text, importance, the serving runtime, the latency table,
   the plan evaluator and the one-off sensitivities;
2. search: each searcher (the chosen one, and the baselines) with the same number of plan
   evaluations, state saved every few evaluations (state.py); the best plans re-scored on
   more calibration text (multi-fidelity);
3. deliver (deliver.py): recovery, export, held-out quality and side-by-side latency,
   result.json and the report.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ppocompress.compress.distillation import DistillConfig
from ppocompress.compress.recovery import check_method
from ppocompress.compress.runtimes import CHOICES as RUNTIME_CHOICES
from ppocompress.compress.text import CALIBRATION_PASSAGES, EVALUATION_PASSAGES
from ppocompress.compress.timing import TimingSetup
from ppocompress.errors import UserError
from ppocompress.fileio import atomic_write_text
from ppocompress.search.deliver import deliver
from ppocompress.search.env import CompressionEnv, Target
from ppocompress.search.evaluator import PlanEvaluator, reward_from_fidelity
from ppocompress.search.prepare import Prepared, prepare
from ppocompress.search.results import CompressResult
from ppocompress.search.searchers import SEARCHERS, SearchResult, run_searcher
from ppocompress.search.state import SearchState

SAVE_EVERY = 5  # evaluations between state saves
DEFAULT_TARGET_SPEEDUP = 5.0  # above what dense int8 on the best runtime gives here (3.8x)
# Evaluations per searcher. A causal LM's cost more (SmolLM2: about 1.5 s, MiniLM 0.3 s);
# 100 keeps the default decoder run near 30 minutes on 2 cores.
DEFAULT_EVALS = {False: 200, True: 100}
FINALISTS = 3  # best plans of a searcher re-scored on more calibration text


@dataclass
class CompressSettings:
    model: str | None = None
    target_speedup: float | None = DEFAULT_TARGET_SPEEDUP
    target_size: float | None = None
    searcher: str = "ppo"
    evals: int | None = None  # per searcher; None: DEFAULT_EVALS for the model's kind
    recovery: str = "lsq"
    recover_minutes: float | None = None  # a distillation's budget; None: DistillConfig's default
    seed: int = 0
    baselines: bool = True
    threads: int = 2
    text: str | None = None
    cost: str = "measured"  # or "flops"
    runtime: str = "auto"
    trust_remote_code: bool = False
    calibration_texts: int = CALIBRATION_PASSAGES
    evaluation_texts: int = EVALUATION_PASSAGES

    def target(self) -> Target:
        if (self.target_speedup is None) == (self.target_size is None):
            raise UserError("give exactly one of --target-speedup and --target-size")
        return Target("speedup", self.target_speedup) if self.target_speedup is not None else Target("size", self.target_size)

    def searchers(self) -> list[str]:
        """The chosen searcher first, then the baselines on the same budget."""
        return [self.searcher] + ([s for s in SEARCHERS if s != self.searcher] if self.baselines else [])

    def budget(self, causal: bool) -> int:
        """Evaluations each searcher may make."""
        return self.evals if self.evals is not None else DEFAULT_EVALS[causal]

    def distillation(self) -> DistillConfig:
        """How each delivered plan is distilled (if the recovery distills)."""
        return DistillConfig(seed=self.seed) if self.recover_minutes is None else DistillConfig(minutes=self.recover_minutes, seed=self.seed)

    def timing(self, causal: bool) -> TimingSetup:
        return TimingSetup.for_model(causal, self.threads)

    def validate(self) -> None:
        self.target()
        self.timing(causal=False)
        if self.searcher not in SEARCHERS:
            raise UserError(f"unknown searcher {self.searcher!r}; use one of {', '.join(SEARCHERS)}")
        if self.evals is not None and self.evals < 1:
            raise UserError(f"--evals must be >= 1, got {self.evals}")
        if self.cost not in ("measured", "flops"):
            raise UserError(f"--cost must be measured or flops, got {self.cost!r}")
        check_method(self.recovery)
        self.distillation()
        if self.runtime not in RUNTIME_CHOICES:
            raise UserError(f"unknown runtime {self.runtime!r}; use one of {', '.join(RUNTIME_CHOICES)}")


def run_compress(settings: CompressSettings, out: Path, resume: bool = False, log=print) -> CompressResult:
    settings.validate()
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.json"
    if resume:
        if not state_path.exists():
            raise UserError(f"nothing to resume in {out} (no state.json); run without --resume")
        state = SearchState.load(state_path)
        if state.settings != asdict(settings):
            raise UserError("--resume needs the same settings as the interrupted run; compare with state.json")
    else:
        state = SearchState(asdict(settings))
    prepared = prepare(settings, state, lambda: state.save(state_path), log)
    results = search(prepared, settings, state, state_path)
    log("re-scoring the best plans on more calibration text")
    finals = {name: best_at_high_fidelity(prepared.evaluator, result) for name, result in results.items()}
    result = deliver(prepared, settings, finals, results, out, log)
    atomic_write_text(out / "result.json", result.to_json())
    from ppocompress.search.report import write_report

    write_report(out)
    return result


def search(prepared: Prepared, settings: CompressSettings, state: SearchState, state_path: Path) -> dict[str, SearchResult]:
    """Every searcher on the same evaluation budget; evaluations are cached in the state."""
    target = settings.target()

    def make_env(score) -> CompressionEnv:
        return CompressionEnv(prepared.cost, prepared.menu, target, score, prepared.features, prepared.sensitivity,
                               shared_loss=prepared.shared_loss)

    def score(levels: list[int]) -> float:
        key = SearchState.key(levels)
        if key not in state.evaluations:
            state.evaluations[key] = reward_from_fidelity(prepared.evaluator.quality(levels))
            if len(state.evaluations) % SAVE_EVERY == 0:
                state.save(state_path)
        return state.evaluations[key]

    describe = prepared.evaluator.fidelity["low"].describe
    budget = settings.budget(prepared.dense.is_causal)
    results: dict[str, SearchResult] = {}
    for name in settings.searchers():
        if name in state.finished:
            results[name] = SearchResult.from_dict(state.finished[name])
            continue
        with Progress(TextColumn(f"[bold]{name:>12}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
                      TimeElapsedColumn()) as bar:
            task = bar.add_task(name, total=budget, best="")

            def show(recorder) -> None:
                best = 1.0 - math.exp(-recorder.best_reward)
                bar.update(task, completed=len(recorder.cache), best=f"best {describe(best)}")

            results[name] = run_searcher(name, make_env, score, budget, settings.seed, on_evaluation=show)
        state.finished[name] = results[name].to_dict()
        state.save(state_path)
    return results


def best_at_high_fidelity(evaluator: PlanEvaluator, result: SearchResult) -> list[int]:
    candidates = sorted(result.evaluated, key=lambda e: e[1], reverse=True)[:FINALISTS]
    return max((list(levels) for levels, _, _ in candidates), key=lambda levels: evaluator.quality(levels, "high"))
