"""Everything a search needs before its first plan evaluation, in order: the model, text
and menu; importance; the serving runtime; the latency table anchored to dense PyTorch;
the plan evaluator; the one-off sensitivities. Each expensive result is kept in the search
state's measurements, so a resumed run neither re-measures nor changes its evaluations."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from ppocompress.compress import CompressionPlan, LayerPlan, LoadedModel, Precision, apply_plan, layer_table, load_model
from ppocompress.compress.data.text import TextSplits, load_splits, subset
from ppocompress.compress.measure.quality import HeldOut
from ppocompress.compress.measure.timing import TimingSetup, measure_latencies
from ppocompress.compress.ops.importance import LayerImportance, importance_scores
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import AUTO, REFERENCE, available_runtimes, get_runtime, no_generation
from ppocompress.errors import UserError
from ppocompress.search.cost_table import (
    CostTable,
    anchor_reference,
    flops_table,
    measured_table,
    size_table,
    table_cache_path,
    table_setup,
    timing_calibration,
)
from ppocompress.search.env import SIZE, Target, check_reachable
from ppocompress.search.estimate import Estimate, estimate
from ppocompress.search.evaluator import (
    PlanEvaluator,
    drop_pair_evaluations,
    drop_pair_table,
    fidelity_passages,
    searched_head,
    sensitivity_evaluations,
    sensitivity_table,
)
from ppocompress.search.levels import (
    DECODER_PRECISIONS,
    DENSE,
    ENCODER_PRECISIONS,
    Level,
    default_menu,
    drop_index,
)
from ppocompress.search.plan import Plan
from ppocompress.search.policy import load_policy
from ppocompress.search.progress import count_bar
from ppocompress.search.reward import additive_loss, quality_lost
from ppocompress.search.scoring import EvaluatorSpec, RayScorer, Scorer
from ppocompress.search.settings import MEASURED, CompressSettings
from ppocompress.search.state import Measurements, SearchState

IMPORTANCE_PASSAGES = 256
# A causal LM's least squares run on fewer passages: their statistics are gathered over
# every token, and a delivered plan's sequential refit runs the model over them again at
# each stage, which on all the calibration text takes minutes even for a small decoder.
CAUSAL_REFIT_PASSAGES = 256
CAUSAL_VALIDATION_SHARE = 0.25  # of those, as many again for choosing each refit's ridge
ANCHOR_ROUNDS = 3  # rounds of the dense timings taken at the start of every run
PREFERENCE = ("openvino", "onnxruntime", "torch")  # --runtime auto without measuring (--cost flops)


@dataclass
class Prepared:
    dense: LoadedModel
    texts: TextSplits
    scores: list[LayerImportance]
    menu: list[Level]
    runtime: str
    setup: TimingSetup  # how delivered models are timed
    cost: CostTable
    evaluator: PlanEvaluator  # this process's: it builds the delivered plans
    scorer: Scorer  # who scores plans in the search: the evaluator, or Ray workers
    sensitivity: np.ndarray  # (layers, levels) lost when only that layer is compressed (relative_sensitivity)
    # (layers, layers) what dropping both loses beyond their one-off drops (None: no drop level)
    drop_interaction: np.ndarray | None
    shared_loss: float  # lost by the plan every plan starts from (a causal LM's int8 output head), additive_loss's scale
    features: np.ndarray  # (layers, 2) block influence and importance spread

    @cached_property
    def held_out(self) -> HeldOut:
        """Delivery's judge, for every target of the run: the dense model's held-out outputs
        (retrieval's over the corpus) are computed once."""
        return HeldOut(self.dense, self.texts.evaluation, self.texts.corpus)


def prepare(settings: CompressSettings, state: SearchState, save_state, log, workers: int | None = None) -> Prepared:
    """save_state() writes `state` to disk; workers: Ray workers to score plans on (inside
    scoring.ray_workers), None for this process."""
    dense, texts, menu = _load(settings)
    targets, setup, calibration = settings.targets(), settings.timing(dense.is_causal), texts.calibration
    measured = settings.cost == MEASURED and targets[0].kind != SIZE
    if not measured:  # a measured table is checked once it is timed
        cost = (size_table(dense, menu, _asked_runtime(settings, dense.is_causal)) if targets[0].kind == SIZE
                else flops_table(dense, menu))
        check_reachable(cost, menu, targets)
    taken = state.measurements
    scores = _importance(dense, calibration, taken, save_state, log)
    if settings.runtime != AUTO and dense.is_causal and no_generation(get_runtime(settings.runtime)):
        raise UserError(no_generation(get_runtime(settings.runtime)) + "; pass --runtime torch")
    log(_duration(settings, state, dense, menu, setup, measured).line())
    runtime = _serving_runtime(settings, dense, menu, setup, calibration, measured, taken, save_state, log)
    if measured:
        cost = _latency_table(dense, menu, runtime, setup, calibration, taken.dense_ms, targets, log)
    evaluator, scorer = _evaluator(settings, dense, menu, scores, calibration, runtime, workers, log)
    sensitivity, interaction = _sensitivities(evaluator, scorer, menu, len(scores), taken, save_state, log)
    features = np.array([[s.block_influence, float(s.neurons.std() / (s.neurons.mean() + 1e-12))] for s in scores])
    return Prepared(dense, texts, scores, menu, runtime, setup, cost, evaluator, scorer, sensitivity, interaction,
                    float(additive_loss(max(taken.sensitivity_baseline, 0.0))), features)


def _load(settings: CompressSettings) -> tuple[LoadedModel, TextSplits, list[Level]]:
    """The dense model, the text splits and the model's menu of levels."""
    dense = load_model(settings.model, trust_remote_code=settings.trust_remote_code)
    texts = subset(load_splits(settings.text), settings.calibration_texts, settings.evaluation_texts)
    menu = model_menu(dense, _asked_runtime(settings, dense.is_causal))
    if settings.policy is not None:  # another menu or a damaged agent is refused now, not minutes later
        load_policy(Path(settings.policy), menu)
    return dense, texts, menu


def _importance(dense: LoadedModel, calibration: list[str], taken: Measurements, save_state, log) -> list[LayerImportance]:
    """Each layer's importance scores, measured once."""
    if taken.importance is None:
        log(f"model {dense.source}: importance scores on {min(IMPORTANCE_PASSAGES, len(calibration))} calibration passages")
        start = time.monotonic()
        layers = importance_scores(dense, calibration[:IMPORTANCE_PASSAGES])
        taken.importance_seconds = time.monotonic() - start
        taken.importance = [layer.to_dict() for layer in layers]
        save_state()
    else:
        log(f"model {dense.source}: importance scores from the saved state")
    return [LayerImportance.from_dict(layer) for layer in taken.importance]  # as a resumed run reads them


def _duration(settings: CompressSettings, state: SearchState, dense: LoadedModel, menu: list[Level], setup: TimingSetup,
              measured: bool) -> Estimate:
    """How long what is left of the run will take."""
    taken, layers = state.measurements, len(state.measurements.importance)
    pairs_left = 0 if drop_index(menu) is None else drop_pair_evaluations(layers) - sum(map(len, taken.drop_pairs))
    # auto, not yet timed: a table this machine cached for a candidate is the one an earlier
    # run's timing chose, which this run's is likely to choose again (no table: nothing timed)
    likely = [] if not measured else [taken.runtime] if taken.runtime else _candidates(settings, dense, menu, log=None)
    targets = settings.targets()
    return estimate(taken.importance_seconds, [s for s in settings.searchers() if s not in state.finished],
                    settings.max_evaluations(dense.is_causal), len(menu),
                    sensitivity_evaluations(layers - len(taken.sensitivity), len(menu)) + pairs_left,
                    table_cached=any(table_cache_path(dense, menu, r, table_setup(setup)).exists() for r in likely),
                    dense_timed=taken.dense_ms is not None, measured=measured, causal=dense.is_causal,
                    distill_minutes=settings.distillation().minutes if Recovery(settings.recovery).distills else 0.0,
                    targets=len(targets), floor=settings.min_quality is not None,
                    floor_distill_minutes=settings.floor_distill_minutes())


def model_menu(dense: LoadedModel, runtime: str) -> list[Level]:
    """The menu of levels for this model served on `runtime`: int4 for a decoder on a
    runtime that serves it, int8 and floating point otherwise."""
    int4 = dense.is_causal and get_runtime(runtime).serves_int4
    return default_menu(precisions=DECODER_PRECISIONS if int4 else ENCODER_PRECISIONS,
                        groups=layer_table(dense.model)[0].kv_heads)


def _asked_runtime(settings: CompressSettings, causal: bool) -> str:
    """The runtime --runtime names, or for auto the preferred one (what timing usually picks)."""
    return settings.runtime if settings.runtime != AUTO else preferred_runtime(causal)


def _serving_runtime(settings: CompressSettings, dense: LoadedModel, menu: list[Level], setup: TimingSetup,
                     calibration: list[str], measured: bool, taken: Measurements, save_state, log) -> str:
    """The runtime delivered models are served on, chosen once: with a measured cost, after
    timing the dense model on each candidate (auto: the fastest dense int8 model's, among
    the runtimes that serve every precision of the menu)."""
    if taken.runtime is None:
        if measured:
            taken.dense_ms = time_dense_variants(dense, _candidates(settings, dense, menu, log),
                                                 replace(setup, rounds=ANCHOR_ROUNDS),
                                                 timing_calibration(dense, calibration), log)
            taken.runtime = settings.runtime if settings.runtime != AUTO else fastest_int8(taken.dense_ms)
        else:
            taken.runtime = _asked_runtime(settings, dense.is_causal)
        save_state()
    get_runtime(taken.runtime).require()
    log(f"serving runtime: {taken.runtime}")
    return taken.runtime


def _candidates(settings: CompressSettings, dense: LoadedModel, menu: list[Level], log) -> list[str]:
    """The runtimes the serving one is chosen from: --runtime's, or for auto every runtime
    that runs here and serves every precision of the menu (log: None, or where each
    runtime that cannot run is reported)."""
    if settings.runtime != AUTO:
        return [settings.runtime]
    int4 = any(level.weights == Precision.INT4 for level in menu)
    return [r.name for r in available_runtimes(log, causal=dense.is_causal) if r.serves_int4 or not int4]


def _latency_table(dense: LoadedModel, menu: list[Level], runtime: str, setup: TimingSetup, calibration: list[str],
                   dense_ms: dict[str, float], targets: list[Target], log) -> CostTable:
    """The measured latency table on `runtime`, anchored to the dense timings of this run."""
    cost = measured_table(dense, menu, runtime, table_setup(setup), calibration, log=log)
    cost = anchor_reference(cost, dense_ms[REFERENCE], dense_ms[runtime], log=log)
    check_reachable(cost, menu, targets)  # before the sensitivities
    return cost


def _evaluator(settings: CompressSettings, dense: LoadedModel, menu: list[Level], scores: list[LayerImportance],
               calibration: list[str], runtime: str, workers: int | None, log) -> tuple[PlanEvaluator, Scorer]:
    """This process's plan evaluator, and who scores the search's plans (it, or Ray workers)."""
    # The search prices least-squares recovery in when the delivery starts with it, refit on
    # calibration text apart from the passages plans are scored on.
    scored = fidelity_passages(dense.is_causal)["high"]
    spec = EvaluatorSpec(settings.model, settings.trust_remote_code, menu, scores, calibration,
                         recovery=Recovery.LSQ if Recovery(settings.recovery).refits else Recovery.NONE,
                         recovery_texts=refit_passages(calibration[scored:], dense.is_causal) or calibration, runtime=runtime)
    evaluator = spec.build(dense)
    if workers is None:
        return evaluator, evaluator
    log(f"plan evaluations on {workers} Ray workers")
    return evaluator, RayScorer(spec, workers, evaluator.identity)


def _sensitivities(evaluator: PlanEvaluator, scorer: Scorer, menu: list[Level], layers: int, taken: Measurements,
                   save_state, log) -> tuple[np.ndarray, np.ndarray | None]:
    """The one-off sensitivities (relative_sensitivity) and, with a drop level, what pairs of
    dropped layers lose beyond them (drop_interaction); each table measured once, row by row."""
    if len(taken.sensitivity) < layers:
        log(f"sensitivity of {layers} layers x {len(menu)} levels (once)")
        with count_bar("sensitivity", "layers") as bar:
            task = bar.add_task("sensitivity", total=layers, completed=len(taken.sensitivity))

            def measured_layer(done: list) -> None:
                bar.update(task, completed=len(done))
                save_state()

            sensitivity_table(scorer.qualities, layers, len(menu), rows=taken.sensitivity, on_layer=measured_layer)
        save_state()
    if taken.sensitivity_baseline is None:
        taken.sensitivity_baseline = quality_lost(evaluator.quality(Plan.uniform(DENSE, layers), "probe"))
        save_state()
    sensitivity = relative_sensitivity(np.array(taken.sensitivity), taken.sensitivity_baseline)
    drop = drop_index(menu)
    if drop is None:
        return sensitivity, None
    if len(taken.drop_pairs) < layers - 1:
        log(f"quality of the {drop_pair_evaluations(layers)} plans that drop two layers (once)")
        drop_pair_table(scorer.qualities, layers, drop, rows=taken.drop_pairs, on_row=lambda _: save_state())
        save_state()
    return sensitivity, drop_interaction(taken.drop_pairs, taken.sensitivity_baseline, sensitivity[:, drop])


def drop_interaction(pairs: list[list[float]], baseline: float, drop_sensitivity: np.ndarray) -> np.ndarray:
    """A symmetric (layers, layers) table, zero on the diagonal: what two layers dropped
    together lose (drop_pair_table's rows, less the baseline every plan carries) beyond the
    sum of their one-off drops (relative_sensitivity's), on reward.additive_loss's scale;
    negative where the pair loses less."""
    layers = len(drop_sensitivity)
    table = np.zeros((layers, layers))
    for first, row in enumerate(pairs):
        for second, loss in enumerate(additive_loss(np.array(row)) - additive_loss(baseline), start=first + 1):
            table[first, second] = table[second, first] = loss - drop_sensitivity[first] - drop_sensitivity[second]
    return table


def relative_sensitivity(table: np.ndarray, baseline: float) -> np.ndarray:
    """Each layer's own quality loss, on reward.additive_loss's scale: the table's less what
    the plan with every layer dense already loses. That is nothing for an encoder, but a
    causal LM's plans all carry an int8 output head, whose loss can be nearly all that one
    int8 layer is measured to lose: it would otherwise count once per compressed layer and
    make a few heavily pruned layers look cheaper than many int8 ones."""
    relative = np.clip(additive_loss(table) - additive_loss(baseline), 0.0, None)
    relative[:, DENSE] = 0.0
    return relative


def refit_passages(texts: list[str], causal: bool, share: float = 1.0) -> list[str]:
    """The passages least squares refits on (share=1) or validates its ridge on (a smaller
    share: each refit stage runs the compressed model over them again): all of `texts`,
    or a share of CAUSAL_REFIT_PASSAGES for a causal LM."""
    return texts[:int(CAUSAL_REFIT_PASSAGES * share)] if causal else texts


def preferred_runtime(causal: bool = False) -> str:
    """The first runtime of PREFERENCE that can run here (where a timed choice usually lands)."""
    return next(r.name for r in map(get_runtime, PREFERENCE) if r.missing() is None and not (causal and no_generation(r)))


def all_int8(dense: LoadedModel) -> LoadedModel:
    """The dense model with every layer (and a causal LM's output head) marked int8 (fp32
    weights until a runtime quantizes)."""
    return all_in(dense, Precision.INT8)


def all_in(dense: LoadedModel, precision: Precision) -> LoadedModel:
    """The dense model with every layer's weights marked `precision`, and a causal LM's
    output head int8 (as NNCF's int4 keeps it too); fp32 until a runtime exports it."""
    layers = [LayerPlan(weights=precision) for _ in range(dense.model.config.num_hidden_layers)]
    return apply_plan(dense, CompressionPlan(layers, head=searched_head(dense)), quantize=False)


def time_dense_variants(dense: LoadedModel, runtimes: list[str], setup: TimingSetup, calibration: list[str],
                        log) -> dict[str, float]:
    """Dense PyTorch fp32 (REFERENCE), and on each runtime the dense model at its default
    precision (name) and with int8 in every layer ("name int8"), side by side, in ms."""
    with tempfile.TemporaryDirectory(prefix="ppocompress-dense-") as workdir:
        work = Path(workdir)
        targets = [(REFERENCE, get_runtime(REFERENCE).export(dense, work / REFERENCE, []), REFERENCE)]
        int8 = all_int8(dense)
        for name in runtimes:
            runtime = get_runtime(name)
            if name != REFERENCE:
                targets.append((name, runtime.export(dense, work / name, calibration), name))
            targets.append((f"{name} int8", runtime.export(int8, work / f"{name}-int8", calibration), name))
        log(f"timing the dense model on {', '.join(runtimes)}: {len(targets)} models x {setup.rounds} rounds")
        measured = measure_latencies(targets, setup)
    timings = {label: result.ms for label, result in measured.items()}
    log("dense: " + ", ".join(f"{label} {ms:.1f} ms" for label, ms in timings.items()))
    return timings


def fastest_int8(timings: dict[str, float]) -> str:
    """The runtime whose dense int8 model ran fastest."""
    return min((label for label in timings if label.endswith(" int8")), key=timings.get).removesuffix(" int8")
