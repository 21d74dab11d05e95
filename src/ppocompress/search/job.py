"""`ppocompress compress`: prepare, search, deliver. The path from the command to the
delivered folder, a hop a line:

run_compress (here): checks the settings, holds --out, opens or resumes the state;
1. prepare (prepare.py): model, text, importance, the serving runtime, the latency table,
   the plan evaluator and the one-off sensitivities;
2. search (searching.py): each searcher (searchers.py: the chosen one, and the baselines)
   on the same number of plan evaluations, the state saved every few evaluations
   (state.py), a learnt policy saved (policy.py); then each searcher's best plans
   re-scored on more calibration text (multi-fidelity);
3. deliver (deliver.py), per target: recovery, export, held-out quality and side-by-side
   latency; then result.json (results.py) and the report (report.py).

A target set (--targets 2,3,4): PPO searches every target in one run with one policy on
one number of evaluations; the other searchers run per target, sharing the same number
out; then a model is delivered per target into out/target-<target>/, with the set's
family.json and report in out. With a quality floor (--min-quality) the targets are
searched the same way, then one model is delivered into out, the target the floor chooses
(floor.py).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from ppocompress.cluster import check_address
from ppocompress.compress.recovery.method import Recovery
from ppocompress.errors import UserError
from ppocompress.fileio import atomic_write_text, output_dir, read_json_object, remove_leftovers, staging_dir
from ppocompress.search.deliver import deliver, recover_plan
from ppocompress.search.env import Target
from ppocompress.search.files import POLICY_DIR, RECOVERY_CHECKPOINTS, RESULT_FILE, STATE_FILE, TARGET_SET_FILE
from ppocompress.search.floor import Judged, choose_target, delivered_target
from ppocompress.search.prepare import Prepared, prepare
from ppocompress.search.results import CompressResult, QualityFloor, TargetSetResult
from ppocompress.search.scoring import ray_workers
from ppocompress.search.searching import Finals, Results, finalists, search, target_set_evaluations
from ppocompress.search.settings import CompressSettings
from ppocompress.search.state import STATE_FORMAT, STATE_FORMAT_NAME, SearchState


def run_compress(settings: CompressSettings, out: Path, resume: bool = False, log=print,
                 ray: str | None = None) -> list[CompressResult]:
    """Search, then deliver a model per target: into `out` for one target; for a target set
    into out/target-<target>/ each, with the set's file and report in `out`. One run
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
    return state.measurements.taken() or bool(state.evaluations)


def _run(settings: CompressSettings, out: Path, resume: bool, log, ray: str | None) -> list[CompressResult]:
    state_path = out / STATE_FILE
    state = _resumed_state(settings, out) if resume else _new_state(settings, out)
    for path in remove_leftovers(out):
        log(f"removed {path.relative_to(out)}, left by an interrupted run")
    state.save(state_path)  # from the start: a run killed at any moment can be resumed
    targets = settings.targets()
    folders = {target.label: out / member_folder(target) if settings.delivers_set else out for target in targets}
    with ray_workers(ray) as workers:
        with _timed(state, "preparation"):
            prepared = prepare(settings, state, lambda: state.save(state_path), log, workers)
        with _timed(state, "search"):
            results = search(prepared, settings, state, state_path, out / POLICY_DIR, log)
            undelivered = [label for label in results
                           if not (resume and settings.delivers_set and (folders[label] / RESULT_FILE).exists())]
            # a floor delivers one target, chosen by the delivered searcher's plans alone
            searchers = None if settings.min_quality is None else [settings.searcher]
            finals = finalists(prepared, targets, results, undelivered, log, searchers)
    state.save(state_path)
    if settings.min_quality is not None:
        return [_delivered_by_floor(prepared, settings, state, targets, finals, results, out, log)]
    delivered = [_delivered(prepared, settings, state, target, finals.plans.get(target.label), results,
                            folders[target.label], log) for target in targets]
    if settings.delivers_set:
        _write_target_set(out, settings, delivered, results)
    return delivered


def _new_state(settings: CompressSettings, out: Path) -> SearchState:
    """A fresh state; refused where an interrupted run's measurements would be lost."""
    finished = out / (TARGET_SET_FILE if settings.delivers_set else RESULT_FILE)
    if not finished.exists():
        if _worth_resuming(out / STATE_FILE):
            raise UserError(f"{out} holds an interrupted run's measurements; add --resume to continue it, "
                            f"or choose another --out (or delete {out / STATE_FILE}) to start afresh")
        _refuse_another_versions_state(out / STATE_FILE)
    return SearchState(asdict(settings))


def _refuse_another_versions_state(path: Path) -> None:
    """A state another version of ppocompress wrote is not overwritten: its measurements
    may be hours of work that version can still resume (a damaged state is, as before)."""
    try:
        written = read_json_object(path, "search state", "").get("format")
    except UserError:
        return
    if isinstance(written, str) and written.startswith(STATE_FORMAT_NAME) and written != STATE_FORMAT:
        raise UserError(f"{path} is an interrupted run's state from another version of ppocompress ({written}); "
                        "resume it with that version, or choose another --out (or delete the file) to start afresh")


def _resumed_state(settings: CompressSettings, out: Path) -> SearchState:
    """The interrupted run's state; refused unless it was asked for the same."""
    if not (out / STATE_FILE).exists():
        raise UserError(f"nothing to resume in {out} (no {STATE_FILE}); run without --resume")
    state = SearchState.load(out / STATE_FILE)
    asked = asdict(settings)
    differing = sorted(k for k in {*state.settings, *asked} if state.settings.get(k) != asked.get(k))
    if differing:
        raise UserError(f"--resume needs the same settings as the interrupted run; these differ: {', '.join(differing)}")
    return state


def _delivered_by_floor(prepared: Prepared, settings: CompressSettings, state: SearchState, targets: list[Target],
                        finals: Finals, results: Results, out: Path, log) -> CompressResult:
    """The target the quality floor chooses delivered into `out` (floor.py), the other
    searchers' plans for it chosen then."""

    def recover(with_settings: CompressSettings, plan, checkpoint: str):
        return recover_plan(prepared, with_settings, plan, out / RECOVERY_CHECKPOINTS / checkpoint)

    plans = {label: by_searcher[settings.searcher] for label, by_searcher in finals.plans.items()}
    staging = staging_dir(out, "floor")  # the judged artifact stays until delivery has shipped it
    try:
        with _timed(state, "floor"):
            floor, judged = choose_target(prepared, targets, plans, settings, recover, staging, log,
                                          _estimates(settings, finals))
        target = delivered_target(targets, floor)
        others = [name for name in results[target.label] if name != settings.searcher]
        chosen = finals.plans[target.label] | (
            finalists(prepared, targets, results, [target.label], log, others).plans[target.label] if others else {})
        return _delivered(prepared, settings, state, target, chosen, results, out, log, floor, judged)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _estimates(settings: CompressSettings, finals: Finals) -> dict[str, float] | None:
    """The search's score of the delivered searcher's plans (label -> fidelity on the larger
    calibration subset), where the search priced in the recovery the floor probes with
    first: it does least squares (or nothing) as delivery does, but not distillation."""
    if Recovery(settings.recovery).distills:
        return None
    return {label: qualities[settings.searcher] for label, qualities in finals.qualities.items()}


def _delivered(prepared: Prepared, settings: CompressSettings, state: SearchState, target: Target, finals: dict | None,
               results: Results, folder: Path, log, floor: QualityFloor | None = None,
               judged: Judged | None = None) -> CompressResult:
    """The target's model delivered into `folder` with its result.json and report, or the
    result delivered before an interruption (finals None); floor: a quality floor's choice,
    judged: the delivered searcher's plan as the floor judged it (floor.choose_target)."""
    if finals is None:
        return CompressResult.from_file(folder / RESULT_FILE)
    from ppocompress.search.report import write_report  # matplotlib, only for the report's plots

    folder.mkdir(exist_ok=True)
    start = time.monotonic()
    result = deliver(prepared, settings, target, finals, results[target.label], folder, log, floor=floor, judged=judged)
    result.run_seconds = {**state.measurements.run_seconds, "delivery": time.monotonic() - start}
    atomic_write_text(folder / RESULT_FILE, result.to_json())
    write_report(folder)
    return result


def _write_target_set(out: Path, settings: CompressSettings, delivered: list[CompressResult], results: Results) -> None:
    """The target set's file, naming its members, and its report."""
    from ppocompress.search.report import write_target_set_report  # matplotlib, only for the report's plots

    target_set = TargetSetResult(delivered, [member_folder(t) for t in settings.targets()], target_set_evaluations(results),
                                 POLICY_DIR if (out / POLICY_DIR).is_dir() else None)
    atomic_write_text(out / TARGET_SET_FILE, target_set.to_json())
    write_target_set_report(out)


@contextlib.contextmanager
def _timed(state: SearchState, phase: str):
    """Adds the phase's wall time to the state's (saved with the state's next save)."""
    start = time.monotonic()
    yield
    seconds = state.measurements.run_seconds
    seconds[phase] = seconds.get(phase, 0.0) + time.monotonic() - start


def member_folder(target: Target) -> str:
    """A target set member's folder in --out, its label's: "target-4x", "target-1.2x-int8", "target-size-0.5"."""
    return "target-" + target.label.replace(" ", "-")
