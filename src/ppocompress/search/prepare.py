"""Everything a search needs before its first plan evaluation: the model and text,
importance, the serving runtime, the latency table anchored to dense PyTorch, the plan
evaluator and the one-off sensitivities. Each expensive result is kept in the search
state, so a resumed run neither re-measures nor changes its budget."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ppocompress.compress import (
    CompressionPlan,
    LayerPlan,
    LoadedModel,
    apply_plan,
    layer_table,
    load_model,
)
from ppocompress.compress.data.text import TextSplits, load_splits, subset
from ppocompress.compress.measure.timing import TimingSetup, measure_latencies
from ppocompress.compress.ops.importance import LayerImportance, importance_scores
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import available_runtimes, get_runtime, no_generation
from ppocompress.errors import UserError
from ppocompress.search.cost_table import (
    CALIBRATION_FOR_TIMING,
    CostTable,
    anchor_reference,
    flops_table,
    measured_table,
    table_cache_path,
    table_setup,
)
from ppocompress.search.env import check_reachable
from ppocompress.search.estimate import estimate
from ppocompress.search.evaluator import (
    PlanEvaluator,
    drop_pair_table,
    fidelity_passages,
    sensitivity_table,
)
from ppocompress.search.levels import Level, default_menu, drop_index
from ppocompress.search.policy import load_policy
from ppocompress.search.scoring import EvaluatorSpec, RayScorer, Scorer
from ppocompress.search.state import SearchState
from ppocompress.terminal import stderr_progress

IMPORTANCE = "importance"  # state.extras: the importance scores and the seconds they took
PARTIAL_SENSITIVITY = "sensitivity_rows"  # state.extras: the layers of the sensitivity table measured so far
DROP_PAIRS = "drop_pairs"  # state.extras: drop_pair_table's rows
PARTIAL_DROP_PAIRS = "drop_pair_rows"  # state.extras: its rows measured so far

IMPORTANCE_PASSAGES = 256
# A causal LM's least squares run on fewer passages: on SmolLM2, statistics of 960 took 2
# minutes in the search, and a delivered plan's sequential refit on 1,024 took 6.
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
    evaluator: PlanEvaluator  # this machine's: it builds the delivered plans
    scorer: Scorer  # who scores plans in the search: the evaluator, or Ray workers
    sensitivity: np.ndarray  # (layers, levels) quality lost when only that layer is compressed (relative_sensitivity)
    drop_interaction: np.ndarray | None  # (layers, layers) what dropping both loses beyond their one-off drops (None: no drop level)
    shared_loss: float  # quality lost by the plan every plan starts from (a causal LM's int8 output head)
    features: np.ndarray  # (layers, 2) block influence and importance spread


def prepare(settings, state: SearchState, save_state, log, workers: int | None = None) -> Prepared:
    """settings: a CompressSettings; save_state() writes `state` to disk; workers: Ray
    workers to score plans on (inside scoring.ray_workers), None for this process."""
    dense = load_model(settings.model, trust_remote_code=settings.trust_remote_code)
    texts = subset(load_splits(settings.text), settings.calibration_texts, settings.evaluation_texts)
    calibration = texts.calibration
    menu = default_menu(groups=layer_table(dense.model)[0].kv_heads)
    drop = drop_index(menu)
    if settings.policy is not None:  # another menu or a damaged agent is refused now, not minutes later
        load_policy(Path(settings.policy), menu)
    targets = settings.targets()
    setup = settings.timing(dense.is_causal)
    measured = settings.cost == "measured" and targets[0].kind == "speedup"
    if not measured:  # parameters scale like FLOPs per layer; int8 is priced by its discount
        cost = flops_table(dense, menu)
        check_reachable(cost, menu, targets)  # a measured table is checked once it is timed
    if IMPORTANCE not in state.extras:
        log(f"model {dense.source}: importance scores on {min(IMPORTANCE_PASSAGES, len(calibration))} calibration passages")
        start = time.monotonic()
        layers = importance_scores(dense, calibration[:IMPORTANCE_PASSAGES])
        state.extras[IMPORTANCE] = {"seconds": time.monotonic() - start, "layers": [layer.to_dict() for layer in layers]}
        save_state()
    else:
        log(f"model {dense.source}: importance scores from the saved state")
    scores = [LayerImportance.from_dict(layer) for layer in state.extras[IMPORTANCE]["layers"]]
    drop_pairs = 0 if drop is None else len(scores) * (len(scores) - 1) // 2  # plans drop_pair_table scores
    if settings.runtime != "auto" and dense.is_causal and no_generation(get_runtime(settings.runtime)):
        raise UserError(no_generation(get_runtime(settings.runtime)) + "; pass --runtime torch")
    likely_runtime = state.extras.get("runtime", settings.runtime if settings.runtime != "auto" else preferred_runtime(dense.is_causal))
    log(estimate(state.extras[IMPORTANCE]["seconds"], [s for s in settings.searchers() if s not in state.finished], settings.budget(dense.is_causal), len(menu),
                 (0 if "sensitivity" in state.extras else len(scores) * (len(menu) - 1))
                 + (0 if DROP_PAIRS in state.extras else drop_pairs),
                 table_cached=table_cache_path(dense, menu, likely_runtime, table_setup(setup)).exists(),
                 dense_timed="dense_ms" in state.extras, measured=measured, causal=dense.is_causal,
                 distill_minutes=settings.distillation().minutes if Recovery(settings.recovery).distills else 0.0,
                 targets=len(targets)).line())
    if "runtime" not in state.extras:
        if measured:
            candidates = ([settings.runtime] if settings.runtime != "auto"
                          else [r.name for r in available_runtimes(log, causal=dense.is_causal)])
            timings = time_dense_variants(dense, candidates, replace(setup, rounds=ANCHOR_ROUNDS),
                                          calibration[:CALIBRATION_FOR_TIMING], log)
            state.extras["dense_ms"] = timings
            state.extras["runtime"] = settings.runtime if settings.runtime != "auto" else fastest_int8(timings)
        else:
            state.extras["runtime"] = settings.runtime if settings.runtime != "auto" else preferred_runtime(dense.is_causal)
        save_state()
    runtime = state.extras["runtime"]
    get_runtime(runtime).require()
    log(f"serving runtime: {runtime}")
    if measured:
        cost = measured_table(dense, menu, runtime, table_setup(setup), calibration, log=log)
        timings = state.extras["dense_ms"]
        cost = anchor_reference(cost, timings["torch"], timings[runtime], log=log)
        check_reachable(cost, menu, targets)  # before the sensitivities
    # The search prices least-squares recovery in when the delivery starts with it, refit on
    # calibration text apart from the passages plans are scored on.
    scored = fidelity_passages(dense.is_causal)["high"]
    spec = EvaluatorSpec(settings.model, settings.trust_remote_code, menu, scores, calibration,
                         recovery=Recovery.LSQ if Recovery(settings.recovery).refits else Recovery.NONE,
                         recovery_texts=refit_passages(calibration[scored:], dense.is_causal) or calibration, runtime=runtime)
    evaluator = spec.build(dense)
    scorer = evaluator if workers is None else RayScorer(spec, workers, evaluator.identity)
    if workers is not None:
        log(f"plan evaluations on {workers} Ray workers")
    if "sensitivity" not in state.extras:
        log(f"sensitivity of {len(scores)} layers x {len(menu)} levels (once)")
        with stderr_progress(TextColumn("[bold]  sensitivity"), BarColumn(), MofNCompleteColumn(), TextColumn("layers"),
                      TimeElapsedColumn()) as bar:
            rows = state.extras.setdefault(PARTIAL_SENSITIVITY, [])  # layers measured before an interruption
            task = bar.add_task("sensitivity", total=len(scores), completed=len(rows))

            def measured_layer(done: list) -> None:
                bar.update(task, completed=len(done))
                save_state()

            state.extras["sensitivity"] = sensitivity_table(scorer.qualities, len(scores), len(menu), rows=rows,
                                                            on_layer=measured_layer)
        del state.extras[PARTIAL_SENSITIVITY]
        save_state()
    features = np.array([[s.block_influence, float(s.neurons.std() / (s.neurons.mean() + 1e-12))] for s in scores])
    if "sensitivity_baseline" not in state.extras:
        state.extras["sensitivity_baseline"] = 1.0 - evaluator.quality([0] * len(scores), "probe")
        save_state()
    baseline = state.extras["sensitivity_baseline"]
    sensitivity = relative_sensitivity(np.array(state.extras["sensitivity"]), baseline)
    interaction = None
    if drop is not None:
        if DROP_PAIRS not in state.extras:
            log(f"quality of the {drop_pairs} plans that drop two layers (once)")
            rows = state.extras.setdefault(PARTIAL_DROP_PAIRS, [])
            state.extras[DROP_PAIRS] = drop_pair_table(scorer.qualities, len(scores), drop, rows=rows, on_row=lambda _: save_state())
            del state.extras[PARTIAL_DROP_PAIRS]
            save_state()
        interaction = drop_interaction(state.extras[DROP_PAIRS], baseline, sensitivity[:, drop])
    return Prepared(dense, texts, scores, menu, runtime, setup, cost, evaluator, scorer, sensitivity, interaction,
                    max(baseline, 0.0), features)


def drop_interaction(pairs: list[list[float]], baseline: float, drop_sensitivity: np.ndarray) -> np.ndarray:
    """A symmetric (layers, layers) table, zero on the diagonal: the quality two layers
    dropped together lose (drop_pair_table's rows, less the baseline every plan carries)
    beyond the sum of their one-off drops; negative where the pair loses less."""
    layers = len(drop_sensitivity)
    table = np.zeros((layers, layers))
    for first, row in enumerate(pairs):
        for second, loss in enumerate(row, start=first + 1):
            table[first, second] = table[second, first] = (loss - baseline) - drop_sensitivity[first] - drop_sensitivity[second]
    return table


def relative_sensitivity(table: np.ndarray, baseline: float) -> np.ndarray:
    """Each layer's own quality loss: the table less what the plan with every layer at
    level 0 already loses. That is nothing for an encoder, but a causal LM's plans all
    carry an int8 output head, whose loss (SmolLM2: 0.0018 of 0.0019 for one int8 layer)
    would otherwise count once per compressed layer and make a few heavily pruned layers
    look cheaper than many int8 ones."""
    relative = np.clip(table - baseline, 0.0, None)
    relative[:, 0] = 0.0
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
    layers = [LayerPlan(int8=True) for _ in range(dense.model.config.num_hidden_layers)]
    return apply_plan(dense, CompressionPlan(layers, int8_head=dense.is_causal), quantize=False)


def time_dense_variants(dense: LoadedModel, runtimes: list[str], setup: TimingSetup, calibration: list[str], log) -> dict[str, float]:
    """Dense PyTorch fp32 ("torch"), and on each runtime the dense model at its default
    precision (name) and with int8 in every layer ("name int8"), side by side, in ms."""
    with tempfile.TemporaryDirectory(prefix="ppocompress-dense-") as workdir:
        work = Path(workdir)
        targets = [("torch", get_runtime("torch").export(dense, work / "torch", []), "torch")]
        int8 = all_int8(dense)
        for name in runtimes:
            runtime = get_runtime(name)
            if name != "torch":
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
