"""The search step of `ppocompress compress`: every searcher on the same number of plan
evaluations, over every target, each plan evaluated once (the state caches them, shared
by all), then each searcher's finalists re-scored on more calibration text: its best
plans, and the one the free estimate ranks first of those it scored."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ppocompress.search.baselines import best_of
from ppocompress.search.env import CompressionEnv, Target
from ppocompress.search.plan import Plan
from ppocompress.search.policy import load_policy, save_policy, scored_plans
from ppocompress.search.prepare import Prepared
from ppocompress.search.progress import count_bar
from ppocompress.search.recorder import Evaluation, Recorder, SearchResult
from ppocompress.search.reward import PlansScorer, fidelity_from_reward, reward_from_fidelity
from ppocompress.search.scoring import Scorer
from ppocompress.search.searchers import Searcher, get_searcher, run_searcher
from ppocompress.search.settings import CompressSettings
from ppocompress.search.state import SearchState

SAVE_EVERY = 5  # evaluations between state saves
FINALISTS = 3  # best plans of a searcher re-scored on more calibration text

Results = dict[str, dict[str, SearchResult]]  # target label -> searcher -> its result for that target


def compression_env(prepared: Prepared, target: Target | list[Target], score_plans: PlansScorer) -> CompressionEnv:
    """The environment the searchers walk, built in one place for search() and the
    Gymnasium factory (search/factory.py), so both pose the same task."""
    return CompressionEnv(prepared.cost, prepared.menu, target, score_plans, prepared.features, prepared.sensitivity,
                          shared_loss=prepared.shared_loss, drop_interaction=prepared.drop_interaction)


def plan_scorer(prepared: Prepared, evaluations: dict[Plan, float], on_new: Callable[[], None]) -> PlansScorer:
    """Plans' rewards, each plan evaluated once into `evaluations` (evaluations are
    deterministic and the expensive part), a batch's new plans by prepared.scorer (in
    parallel on Ray); on_new() runs after each new evaluation."""
    def score(plans: list[Plan]) -> Iterator[float]:
        new = [plan for plan in dict.fromkeys(plans) if plan not in evaluations]
        qualities = iter(prepared.scorer.qualities(new, "low"))
        for plan in plans:  # each reward as it arrives: the new ones come in the order of their first appearance
            if plan not in evaluations:
                evaluations[plan] = reward_from_fidelity(next(qualities))
                on_new()
            yield evaluations[plan]

    return score


def search(prepared: Prepared, settings: CompressSettings, state: SearchState, state_path: Path,
           policy_dir: Path, log=print) -> Results:
    """Every searcher on the same number of evaluations. A searcher that searches a whole
    target set runs once over all the targets (its policy, if it learns one, is saved in
    policy_dir); the others run per target, on an equal share of the evaluations."""
    targets = settings.targets()
    known = _reused_plans(prepared, settings, state, log) if settings.policy else []
    runs = _Runs(prepared, settings, state, state_path, policy_dir, log)
    judge = runs.env(targets)  # says which plans meet which target
    max_evaluations = settings.max_evaluations(prepared.dense.is_causal)
    results: Results = {t.label: {} for t in targets}
    for name in settings.searchers():
        searcher = get_searcher(name)
        if searcher.whole_target_set or len(targets) == 1:
            whole = runs.run(searcher, "", targets, max_evaluations)
            for index, target in enumerate(targets):
                results[target.label][name] = whole.meeting(lambda plan, index=index: judge.is_valid_plan(plan, index),
                                                            known if searcher.policy else [])
        else:
            for target in targets:
                results[target.label][name] = runs.run(searcher, target.label, target, max(1, max_evaluations // len(targets)))
    return results


class _Runs:
    """The searchers' runs of one search: each a run_searcher on the shared scorer, its
    result kept in the state (a resumed run takes a finished one from there)."""

    def __init__(self, prepared: Prepared, settings: CompressSettings, state: SearchState, state_path: Path,
                 policy_dir: Path, log):
        self.prepared, self.settings, self.state, self.state_path, self.policy_dir, self.log = (
            prepared, settings, state, state_path, policy_dir, log)
        self.score = plan_scorer(prepared, state.evaluations, on_new=self._save_every_few)
        self.describe = prepared.evaluator.fidelity["low"].describe

    def _save_every_few(self) -> None:
        if len(self.state.evaluations) % SAVE_EVERY == 0:
            self.state.save(self.state_path)

    def env(self, targets: Target | list[Target]) -> CompressionEnv:
        return compression_env(self.prepared, targets, self.score)

    def run(self, searcher: Searcher, label: str, targets: Target | list[Target], max_evaluations: int) -> SearchResult:
        """`searcher`'s result on `targets` ("label": one target of a set, searched on its own)."""
        key = f"{searcher.name} {label}" if label else searcher.name
        if key in self.state.finished:
            return self.state.finished[key]
        prepared, settings = self.prepared, self.settings
        self.log(f"search: {key}, {max_evaluations} evaluations")
        with count_bar(key, "{task.fields[best]}") as bar:
            task = bar.add_task(key, total=max_evaluations, best="")

            def show(recorder: Recorder) -> None:
                best = self.describe(fidelity_from_reward(recorder.best_reward))
                bar.update(task, completed=len(recorder.cache), best=f"best {best}")

            policy = load_policy(Path(settings.policy), prepared.menu) if searcher.policy and settings.policy else None
            result = run_searcher(searcher.name, lambda score: compression_env(prepared, targets, score), self.score,
                                  max_evaluations, settings.seed, on_evaluation=show, policy=policy)
        if result.policy is not None:
            save_policy(result.policy, self.policy_dir, prepared.menu, self.state.evaluations, prepared.evaluator.identity)
        self.state.finished[key] = result
        self.state.save(self.state_path)
        return result


def _reused_plans(prepared: Prepared, settings: CompressSettings, state: SearchState, log) -> list[Evaluation]:
    """The plans the --policy run scored, when they were scored as this run scores them:
    they join this run's cache at no cost, and the policy searcher's result for each
    target counts those that meet it."""
    rewards = scored_plans(Path(settings.policy), prepared.evaluator.identity)
    if rewards is None:
        log("the policy's scored plans are of another model, text, recovery or runtime: not reused")
        return []
    for plan, reward in rewards.items():
        state.evaluations.setdefault(plan, reward)
    log(f"reusing the {len(rewards)} plans the policy's run scored")
    return [Evaluation(plan, reward, prepared.cost.speedup(plan)) for plan, reward in rewards.items()]


@dataclass
class Finals:
    """Each target's plans to deliver (label -> searcher -> plan), and the same plans'
    fidelity on the larger calibration subset, recovered as the search recovers."""

    plans: dict[str, dict[str, Plan]] = field(default_factory=dict)
    qualities: dict[str, dict[str, float]] = field(default_factory=dict)


def finalists(prepared: Prepared, targets: list[Target], results: Results, labels: list[str], log,
              searchers: list[str] | None = None) -> Finals:
    """For each target of `labels`, each searcher's (of `searchers`; None: all) plan to
    deliver (best_at_high_fidelity)."""
    estimate = estimated_loss(prepared, targets)
    finals = Finals()
    for label in labels:
        names = [name for name in results[label] if searchers is None or name in searchers]
        whose = "the" if searchers is None else f"{', '.join(names)}'s"
        log(f"{label}: re-scoring {whose} best plans on more calibration text")
        best = {name: best_at_high_fidelity(prepared.scorer, results[label][name], estimate) for name in names}
        finals.plans[label] = {name: plan for name, (plan, _) in best.items()}
        finals.qualities[label] = {name: quality for name, (_, quality) in best.items()}
    return finals


def best_at_high_fidelity(scorer: Scorer, result: SearchResult,
                          estimated_loss: Callable[[Plan], float]) -> tuple[Plan, float]:
    """Of the searcher's FINALISTS best plans, and the plan of the lowest estimated loss it
    scored, the best on the larger calibration subset, and its fidelity there. The best of
    many plans scored on a few passages is partly the luckiest (a decoder's are scored on
    CAUSAL_LOW_FIDELITY): the estimate, made from every layer's own measured drop, is a
    second opinion that noise did not pick."""
    by_reward = sorted(result.evaluated, key=lambda e: e.reward, reverse=True)
    estimated_best = min((e.plan for e in result.evaluated), key=estimated_loss)
    candidates = list(dict.fromkeys([e.plan for e in by_reward[:FINALISTS]] + [estimated_best]))
    return best_of(candidates, list(scorer.qualities(candidates, "high")))


def estimated_loss(prepared: Prepared, targets: list[Target]) -> Callable[[Plan], float]:
    """A plan's loss on the free estimate (CompressionEnv.estimated_loss), no evaluation spent."""
    def not_scored(plans: list[Plan]) -> Iterator[float]:
        raise AssertionError("an env built for its estimate scores no plan")

    return compression_env(prepared, targets, not_scored).estimated_loss


def target_set_evaluations(results: Results) -> dict[str, int]:
    """Evaluations each searcher spent over the target set: a whole-set searcher's one run
    (every target's view of it counts them all), the others' runs per target added up."""
    spent: dict[str, int] = {}
    for per_searcher in results.values():
        for name, result in per_searcher.items():
            spent[name] = result.evaluations if get_searcher(name).whole_target_set else spent.get(name, 0) + result.evaluations
    return spent
