"""`ppocompress compress`: prepare, search, deliver.

1. prepare (prepare.py): model, text, importance, the serving runtime, the latency table,
   the plan evaluator and the one-off sensitivities;
2. search: each searcher (the chosen one, and the baselines) with the same number of plan
   evaluations, state saved every few evaluations (state.py); the best plans re-scored on
   more calibration text (multi-fidelity). PPO's policy is saved (policy.py);
3. deliver (deliver.py): recovery, export, held-out quality and side-by-side latency,
   result.json and the report.

A family (--targets 2,3,4): PPO searches every target in one run with one policy and
one budget; the other searchers run per target, sharing the same budget out; then a
model is delivered per target into out/target-<target>/, with family.json and the
family's report in out.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ppocompress.cluster import check_address
from ppocompress.compress.data.text import CALIBRATION_PASSAGES, EVALUATION_PASSAGES
from ppocompress.compress.measure.timing import DEFAULT_THREADS, TimingSetup
from ppocompress.compress.models.loading import resolve_source
from ppocompress.compress.recovery.distillation import DistillConfig
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import CHOICES as RUNTIME_CHOICES
from ppocompress.errors import UserError
from ppocompress.fileio import atomic_write_text, output_dir, remove_leftovers
from ppocompress.search.deliver import deliver
from ppocompress.search.env import CompressionEnv, PlansScorer, Target
from ppocompress.search.evaluator import reward_from_fidelity
from ppocompress.search.policy import load_policy, save_policy, scored_plans
from ppocompress.search.prepare import Prepared, prepare
from ppocompress.search.results import CompressResult, FamilyResult
from ppocompress.search.scoring import Scorer, ray_workers
from ppocompress.search.searchers import SEARCHERS, SearchResult, best_of, run_searcher
from ppocompress.search.state import SearchState
from ppocompress.terminal import stderr_progress

SAVE_EVERY = 5  # evaluations between state saves
DEFAULT_TARGET_SPEEDUP = 5.0  # above what dense int8 on the best runtime gives here (3.8x)
# Evaluations per searcher. A causal LM's cost more (SmolLM2: about 1.5 s, MiniLM 0.3 s);
# 100 keeps the default decoder run near 30 minutes on 2 cores.
DEFAULT_EVALS = {False: 200, True: 100}
FAMILY_RUNS = 2  # a family's default evaluations, per searcher: those of this many single-target runs
STATE_FILE = "state.json"  # in --out: what --resume continues from
FINALISTS = 3  # best plans of a searcher re-scored on more calibration text
POLICY_DIR = "policy"  # in --out: PPO's policy, for --policy
RUN_SECONDS = "run_seconds"  # state.extras: wall time of the phases finished so far


@dataclass
class CompressSettings:
    model: str | None = None
    target_speedup: float | None = DEFAULT_TARGET_SPEEDUP
    target_size: float | None = None
    family_speedups: list[float] | None = None  # --targets: a model per speedup, from one search
    family_sizes: list[float] | None = None  # --target-sizes
    policy: str | None = None  # a saved search policy PPO starts from
    searcher: str = "ppo"
    evals: int | None = None  # per searcher (a family: over all its targets); None: DEFAULT_EVALS, FAMILY_RUNS times for a family
    recovery: Recovery = Recovery.LSQ
    recover_minutes: float | None = None  # a distillation's budget; None: DistillConfig's default
    seed: int = 0
    baselines: bool = True
    threads: int = DEFAULT_THREADS
    text: str | None = None
    cost: str = "measured"  # or "flops"
    runtime: str = "auto"
    trust_remote_code: bool = False
    calibration_texts: int = CALIBRATION_PASSAGES
    evaluation_texts: int = EVALUATION_PASSAGES

    def targets(self) -> list[Target]:
        """The target, or the family's (ascending, each once); every value checked."""
        given = {"speedup": self.target_speedup, "size": self.target_size}
        family = {"speedup": self.family_speedups, "size": self.family_sizes}
        if sum(v is not None for v in (*given.values(), *family.values())) != 1:
            raise UserError("give exactly one of --target-speedup, --target-size, --targets and --target-sizes")
        kind = next(k for k in given if given[k] is not None or family[k] is not None)
        values = family[kind] if family[kind] is not None else [given[kind]]
        if not values:
            raise UserError("--targets and --target-sizes need at least one value")
        targets = [Target(kind, value) for value in sorted(set(values))]
        for target in targets:
            target.budget(1.0)  # the value's own range
        return targets

    @property
    def family(self) -> bool:
        return self.family_speedups is not None or self.family_sizes is not None

    def searchers(self) -> list[str]:
        """The chosen searcher first, then the baselines on the same budget."""
        return [self.searcher] + ([s for s in SEARCHERS if s != self.searcher] if self.baselines else [])

    def budget(self, causal: bool) -> int:
        """Evaluations each searcher may make (over the whole family)."""
        if self.evals is not None:
            return self.evals
        return DEFAULT_EVALS[causal] * (FAMILY_RUNS if self.family else 1)

    def distillation(self) -> DistillConfig:
        """How each delivered plan is distilled (if the recovery distills)."""
        return DistillConfig(seed=self.seed) if self.recover_minutes is None else DistillConfig(minutes=self.recover_minutes, seed=self.seed)

    def timing(self, causal: bool) -> TimingSetup:
        return TimingSetup.for_model(causal, self.threads)

    def validate(self) -> None:
        self.targets()
        if self.policy is not None and self.searcher != "ppo":
            raise UserError(f"--policy starts the ppo searcher; drop it or use --searcher ppo (got {self.searcher})")
        if self.policy is not None and not Path(self.policy).is_dir():
            raise UserError(f"--policy {self.policy} is not a folder; pass the policy folder of a compress run's --out")
        self.timing(causal=False)
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        resolve_source(self.model)  # a mistyped path fails here, not after minutes
        if self.searcher not in SEARCHERS:
            raise UserError(f"unknown searcher {self.searcher!r}; use one of {', '.join(SEARCHERS)}")
        if self.evals is not None and self.evals < 1:
            raise UserError(f"--evals must be >= 1, got {self.evals}")
        if self.cost not in ("measured", "flops"):
            raise UserError(f"--cost must be measured or flops, got {self.cost!r}")
        Recovery.parse(self.recovery)
        self.distillation()
        if self.runtime not in RUNTIME_CHOICES:
            raise UserError(f"unknown runtime {self.runtime!r}; use one of {', '.join(RUNTIME_CHOICES)}")


def run_compress(settings: CompressSettings, out: Path, resume: bool = False, log=print,
                 ray: str | None = None) -> list[CompressResult]:
    """Search, then deliver a model per target: into `out` for one target; for a family into
    out/target-<target>/ each, with family.json and the family's report in `out`. One run
    at a time holds `out`; a run that fails before it measured anything leaves no folder
    it created behind. ray: where plans are scored in parallel ("local", "auto" or
    host:port; see scoring.py); not a setting, since it changes no result: a run may be
    resumed with or without it."""
    settings.validate()
    if ray is not None:
        check_address(ray)
    with output_dir(out, keep=lambda: _worth_resuming(out / STATE_FILE)):
        return _run(settings, out, resume, log, ray)


def _worth_resuming(state_path: Path) -> bool:
    """Whether the state holds any measurement (a later --resume would skip it)."""
    try:
        state = SearchState.load(state_path)
    except UserError:
        return False
    return bool(state.extras or state.evaluations)


def _run(settings: CompressSettings, out: Path, resume: bool, log, ray: str | None) -> list[CompressResult]:
    state_path = out / STATE_FILE
    if resume:
        if not state_path.exists():
            raise UserError(f"nothing to resume in {out} (no {STATE_FILE}); run without --resume")
        state = SearchState.load(state_path)
        differing = sorted(k for k in {*state.settings, *asdict(settings)} if state.settings.get(k) != asdict(settings).get(k))
        if differing:
            raise UserError(f"--resume needs the same settings as the interrupted run; these differ: {', '.join(differing)}")
    else:
        finished = out / ("family.json" if settings.family else "result.json")
        if _worth_resuming(state_path) and not finished.exists():
            raise UserError(f"{out} holds an interrupted run's measurements; add --resume to continue it, "
                            f"or choose another --out (or delete {state_path}) to start afresh")
        state = SearchState(asdict(settings))
    for path in remove_leftovers(out):
        log(f"removed {path.relative_to(out)}, left by an interrupted run")
    state.save(state_path)  # from the start: a run killed at any moment can be resumed
    folders = {target.label: out / member_folder(target) if settings.family else out for target in settings.targets()}
    with ray_workers(ray) as workers:
        with _timed(state, "preparation"):
            prepared = prepare(settings, state, lambda: state.save(state_path), log, workers)
        with _timed(state, "search"):
            results = search(prepared, settings, state, state_path, out / POLICY_DIR, log)
            finals = {}
            for label, per_searcher in results.items():
                if not (resume and settings.family and (folders[label] / "result.json").exists()):
                    log(f"{label}: re-scoring the best plans on more calibration text")
                    finals[label] = {name: best_at_high_fidelity(prepared.scorer, result) for name, result in per_searcher.items()}
    state.save(state_path)
    from ppocompress.search.report import write_family_report, write_report

    delivered = []
    for target in settings.targets():
        folder = folders[target.label]
        if target.label not in finals:
            delivered.append(CompressResult.from_file(folder / "result.json"))  # delivered before the interruption
            continue
        folder.mkdir(exist_ok=True)
        start = time.monotonic()
        result = deliver(prepared, settings, target, finals[target.label], results[target.label], folder, log)
        result.run_seconds = {**state.extras.get(RUN_SECONDS, {}), "delivery": time.monotonic() - start}
        atomic_write_text(folder / "result.json", result.to_json())
        write_report(folder)
        delivered.append(result)
    if settings.family:
        family = FamilyResult(delivered, [member_folder(t) for t in settings.targets()], family_evaluations(results),
                              POLICY_DIR if (out / POLICY_DIR).is_dir() else None)
        atomic_write_text(out / "family.json", family.to_json())
        write_family_report(out)
    return delivered


@contextlib.contextmanager
def _timed(state: SearchState, phase: str):
    """Adds the phase's wall time to the state's (saved with the state's next save)."""
    start = time.monotonic()
    yield
    seconds = state.extras.setdefault(RUN_SECONDS, {})
    seconds[phase] = seconds.get(phase, 0.0) + time.monotonic() - start


def member_folder(target: Target) -> str:
    """A family member's folder in --out: "target-4x", "target-size-0.5"."""
    return f"target-{target.value:g}x" if target.kind == "speedup" else f"target-size-{target.value:g}"


def family_evaluations(results: dict[str, dict[str, SearchResult]]) -> dict[str, int]:
    """Evaluations each searcher spent over the family: PPO's one run (every target's view
    of it counts them all), the other searchers' runs per target added up."""
    spent: dict[str, int] = {}
    for per_searcher in results.values():
        for name, result in per_searcher.items():
            spent[name] = result.evaluations if name == "ppo" else spent.get(name, 0) + result.evaluations
    return spent


def compression_env(prepared: Prepared, target: Target | list[Target], score_plans: PlansScorer) -> CompressionEnv:
    """The environment the searchers walk, built in one place for search() and the
    Gymnasium factory (search/factory.py), so both pose the same task."""
    return CompressionEnv(prepared.cost, prepared.menu, target, score_plans, prepared.features, prepared.sensitivity,
                          shared_loss=prepared.shared_loss, drop_interaction=prepared.drop_interaction)


def plan_scorer(prepared: Prepared, evaluations: dict[str, float], on_new: Callable[[], None]) -> PlansScorer:
    """Plans' rewards, each plan evaluated once into `evaluations` (SearchState.key ->
    reward; evaluations are deterministic and the expensive part), a batch's new plans
    by prepared.scorer (in parallel on Ray); on_new() runs after each new evaluation."""
    def score(plans: list[list[int]]) -> Iterator[float]:
        keys = [SearchState.key(levels) for levels in plans]
        new = {key: levels for key, levels in zip(keys, plans) if key not in evaluations}
        qualities = iter(prepared.scorer.qualities(list(new.values()), "low"))
        for key in keys:  # each reward as it arrives: the new ones come in the order of their first appearance
            if key not in evaluations:
                evaluations[key] = reward_from_fidelity(next(qualities))
                on_new()
            yield evaluations[key]

    return score


def search(prepared: Prepared, settings: CompressSettings, state: SearchState, state_path: Path,
           policy_dir: Path, log=print) -> dict[str, dict[str, SearchResult]]:
    """Every searcher on the same evaluation budget, as {target label: {searcher: result}}.
    PPO runs once over all the targets and its policy is saved in policy_dir; the others
    run per target on an equal share of the budget. Evaluations are cached in the state,
    shared by all."""
    targets = settings.targets()

    def make_env(selected: Target | list[Target]) -> Callable[..., CompressionEnv]:
        return lambda score: compression_env(prepared, selected, score)

    def save_every_few() -> None:
        if len(state.evaluations) % SAVE_EVERY == 0:
            state.save(state_path)

    score = plan_scorer(prepared, state.evaluations, on_new=save_every_few)

    describe = prepared.evaluator.fidelity["low"].describe

    def run(name: str, label: str, selected, budget: int) -> SearchResult:
        key = f"{name} {label}" if label else name
        if key in state.finished:
            return SearchResult.from_dict(state.finished[key])
        log(f"search: {key}, {budget} evaluations")
        with stderr_progress(TextColumn(f"[bold]{key:>12}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
                      TimeElapsedColumn()) as bar:
            task = bar.add_task(key, total=budget, best="")

            def show(recorder) -> None:
                best = 1.0 - math.exp(-recorder.best_reward)
                bar.update(task, completed=len(recorder.cache), best=f"best {describe(best)}")

            policy = load_policy(Path(settings.policy), prepared.menu) if name == "ppo" and settings.policy else None
            result = run_searcher(name, make_env(selected), score, budget, settings.seed, on_evaluation=show, policy=policy)
        if result.policy is not None:
            save_policy(result.policy, policy_dir, prepared.menu, state.evaluations, prepared.evaluator.identity)
        state.finished[key] = result.to_dict()
        state.save(state_path)
        return result

    known = _reused_plans(prepared, settings, state, log) if settings.policy else []
    budget = settings.budget(prepared.dense.is_causal)
    family = make_env(targets)(score)  # says which plans meet which target
    results: dict[str, dict[str, SearchResult]] = {t.label: {} for t in targets}
    for name in settings.searchers():
        if name == "ppo" or len(targets) == 1:
            whole = run(name, "", targets, budget)
            for index, target in enumerate(targets):
                results[target.label][name] = whole.meeting(lambda levels, index=index: family.is_valid_plan(levels, index),
                                                            known if name == "ppo" else [])
        else:
            for target in targets:
                results[target.label][name] = run(name, target.label, target, max(1, budget // len(targets)))
    return results


def _reused_plans(prepared: Prepared, settings: CompressSettings, state: SearchState, log) -> list[tuple[list[int], float, float]]:
    """The plans the --policy run scored, as (levels, reward, predicted speedup), when they
    were scored as this run scores them: they join this run's cache at no cost, and PPO's
    result for each target counts those that meet it."""
    rewards = scored_plans(Path(settings.policy), prepared.evaluator.identity)
    if rewards is None:
        log("the policy's scored plans are of another model, text, recovery or runtime: not reused")
        return []
    for key, reward in rewards.items():
        state.evaluations.setdefault(key, reward)
    log(f"reusing the {len(rewards)} plans the policy's run scored")
    plans = [(SearchState.levels(key), reward) for key, reward in rewards.items()]
    return [(levels, reward, prepared.cost.speedup(levels)) for levels, reward in plans]


def best_at_high_fidelity(scorer: Scorer, result: SearchResult) -> list[int]:
    """Of the searcher's FINALISTS best plans, the best on the larger calibration subset."""
    candidates = [list(levels) for levels, _, _ in sorted(result.evaluated, key=lambda e: e[1], reverse=True)[:FINALISTS]]
    return best_of(candidates, list(scorer.qualities(candidates, "high")))[0]
