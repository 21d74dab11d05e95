"""Delivery: every searcher's best plan recovered, exported for the serving runtime,
judged on held-out text and timed side by side with dense PyTorch fp32 and with the
dense model on the same runtime (its default precision, and int8: what a user gets with
no search at all). The chosen searcher's model is moved into the output folder."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from ppocompress.compress import Precision
from ppocompress.compress.data.text import load_splits
from ppocompress.compress.files.genai_layout import LLM_FOLDER
from ppocompress.compress.files.sentence_transformers_folder import write_sentence_transformers_files
from ppocompress.compress.measure.quality import HeldOut, HeldOutQuality, greedy_generations
from ppocompress.compress.measure.timing import LatencyResult, measure_latencies, speedups_over_rounds
from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.pipeline import compress
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import REFERENCE, Runtime, get_runtime
from ppocompress.fileio import move_into_place, staging_dir
from ppocompress.search.env import INT8_SPEEDUP, SIZE, SPEEDUP, Target
from ppocompress.search.evaluator import sensitivity_evaluations
from ppocompress.search.files import RECOVERY_CHECKPOINTS
from ppocompress.search.floor import Judged
from ppocompress.search.plan import Plan
from ppocompress.search.prepare import CAUSAL_VALIDATION_SHARE, Prepared, all_in, all_int8, refit_passages
from ppocompress.search.recorder import SearchResult
from ppocompress.search.results import CompressResult, MeasuredModel, QualityFloor, delivers_dense_int8
from ppocompress.search.settings import CompressSettings

# Measured below the target by more than this, a delivery is flagged: delivered plans
# measure close to the latency table, but dense PyTorch fp32, the reference, moves by
# several percent within an hour on a shared machine.
TARGET_TOLERANCE = 0.05
UNQUIET_SPREAD = 0.25  # (p90 - p10) / p10 of a model's timings above which the machine was busy

PROMPTS = ("The capital of France is", "Once upon a time, in a small village,", "The best way to learn a new language is")
GENERATED_TOKENS = 40
DENSE, DENSE_INT8 = "dense", "dense int8"  # the dense alternatives on the serving runtime, by name
DENSE_INT4, NNCF_MIXED = "dense int4", "nncf mixed"  # and where it serves int4 (see CompressResult.alternatives)
# exported alike for every target of a run, so judged on held-out text once (HeldOut.judge)
SAME_EVERY_TARGET = (DENSE, DENSE_INT8, DENSE_INT4)


@dataclass
class _Measures:
    """What delivery measured of each model, by name: the searchers', DENSE and DENSE_INT8
    (and REFERENCE, dense PyTorch fp32, for latency)."""

    quality: dict[str, HeldOutQuality]
    generations: dict[str, list[str]]
    sizes: dict[str, int]
    dense_size: int  # dense PyTorch fp32's safetensors
    latency: dict[str, LatencyResult]


def deliver(prepared: Prepared, settings: CompressSettings, target: Target, finals: dict[str, Plan],
            results: dict[str, SearchResult], out: Path, log, floor: QualityFloor | None = None,
            judged: Judged | None = None) -> CompressResult:
    """finals: each searcher's plan for `target`; out: the folder its model goes to. With a
    quality floor, judged is the delivered searcher's plan for `target` as the floor
    judged it (measured, and shipped if it met the floor, as it is); where no plan met the
    floor, the dense int8 model is delivered."""
    runtime = get_runtime(prepared.runtime)
    held_out = prepared.held_out
    staging = staging_dir(out)
    try:
        torch_dense = get_runtime(REFERENCE).export(prepared.dense, staging / "torch-dense", [])
        dense_int8 = all_int8(prepared.dense)
        artifacts = {DENSE: runtime.export(prepared.dense, staging / "dense", prepared.texts.calibration),
                     DENSE_INT8: runtime.export(dense_int8, staging / "dense-int8", prepared.texts.calibration)}
        known = {} if judged is None else {settings.searcher: judged}
        recovered = _recover(prepared, settings, finals, runtime, staging, out, artifacts, log, known)
        delivered_name = DENSE_INT8 if delivers_dense_int8(floor) else settings.searcher
        if prepared.dense.is_causal and runtime.serves_int4:
            _export_int4_alternatives(prepared, runtime, artifacts, artifacts[delivered_name], staging, log,
                                      mixed=delivered_name != DENSE_INT8)  # sized to dense int8, it would repeat it
        measures = _measure(prepared, delivered_name, runtime, torch_dense, artifacts, held_out, log)
        model = recovered[delivered_name] if delivered_name in recovered else dense_int8
        _move_delivered(prepared, model, runtime, artifacts[delivered_name], staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = CompressResult(
        model=prepared.dense.source, runtime=runtime.name, target_kind=target.kind, target_value=target.value,
        searcher=settings.searcher, timing=prepared.setup, reference_latency=measures.latency[REFERENCE],
        dense_lee_pearson=held_out.dense_lee_pearson(), generations=measures.generations, dense_size_bytes=measures.dense_size,
        searchers={name: _measured(name, measures, runtime, prepared, plan, results[name], recovered[name])
                   for name, plan in finals.items()},
        dense=_measured(DENSE, measures, runtime), dense_int8=_measured(DENSE_INT8, measures, runtime),
        alternatives={name: _measured(name, measures, runtime) for name in (DENSE_INT4, NNCF_MIXED) if name in artifacts},
        sensitivity_evaluations=sensitivity_evaluations(len(prepared.scores), len(prepared.menu)),
        latency_table=({"runtime": prepared.cost.runtime, "largest_error_on_mixed_plans": prepared.cost.fit_error()}
                       if prepared.cost.unit == "ms" else None),
        curves={name: r.curve for name, r in results.items()}, evaluated={name: r.evaluated for name, r in results.items()},
        floor=floor)
    result.warnings = target_warnings(result)
    return result


def _recover(prepared: Prepared, settings: CompressSettings, finals: dict[str, Plan], runtime: Runtime, staging: Path,
             out: Path, artifacts: dict[str, Path], log, known: dict[str, Judged]) -> dict[str, LoadedModel]:
    """Each searcher's plan recovered (recover_plan) and exported into `artifacts`, but for
    those `known` already: recovered, exported and judged by a quality floor."""
    recovered = {}
    for name, plan in finals.items():
        if name in known:
            log(f"{name}: the model the floor judged, as exported for {runtime.name}")
            recovered[name], artifacts[name] = known[name].model, known[name].artifact
            continue
        # recovery and export are deterministic: an equal plan is the same model (but for one
        # the floor judged recovered otherwise: distilled)
        same = next((other for other in recovered if finals[other] == plan
                     and (other not in known or known[other].recovery == settings.recovery)), None)
        if same is not None:
            log(f"{name}: the same plan as {same}")
            recovered[name], artifacts[name] = recovered[same], artifacts[same]
            continue
        log(f"{name}: recovery {settings.recovery}, export for {runtime.name}")
        recovered[name] = recover_plan(prepared, settings, plan, out / RECOVERY_CHECKPOINTS / name)
        artifacts[name] = runtime.export(recovered[name], staging / name, prepared.texts.calibration)
    return recovered


def recover_plan(prepared: Prepared, settings: CompressSettings, plan: Plan, checkpoint: Path) -> LoadedModel:
    """The plan applied to the dense model and recovered as --recover says (a distillation
    trains the int8 layers as the serving runtime computes them, where it can); a
    distillation saves its progress in `checkpoint`, so that --resume continues it."""
    dense, texts = prepared.dense, prepared.texts
    # Distillation learns from all the calibration text, not only what the search scored on.
    distill_texts = load_splits(settings.text).calibration if Recovery(settings.recovery).distills else None
    distillation = replace(settings.distillation(), int8_kind=get_runtime(prepared.runtime).int8_kind)
    return compress(dense, prepared.evaluator.plan(plan), settings.recovery, refit_passages(texts.calibration, dense.is_causal),
                    quantize=False, validation=refit_passages(texts.validation, dense.is_causal, CAUSAL_VALIDATION_SHARE),
                    distillation=distillation, distill_texts=distill_texts, checkpoint=checkpoint, progress=True)


def _export_int4_alternatives(prepared: Prepared, runtime: Runtime, artifacts: dict[str, Path], delivered: Path,
                              staging: Path, log, mixed: bool = True) -> None:
    """Dense int4 (head int8), and (mixed) NNCF's own mixed precision with its int4 share set
    to give the delivered model's weight bytes (as near as its share can: a pruned plan may
    be smaller than all-int4)."""
    from ppocompress.compress.runtimes.openvino_llm import export_nncf_mixed

    calibration = prepared.texts.calibration
    artifacts[DENSE_INT4] = runtime.export(all_in(prepared.dense, Precision.INT4), staging / "dense-int4", calibration)
    if not mixed:
        return
    int8, int4, target = (runtime.size_bytes(path) for path in (artifacts[DENSE_INT8], artifacts[DENSE_INT4], delivered))
    ratio = min(max((int8 - target) / (int8 - int4), 0.0), 1.0)
    log(f"NNCF's mixed precision at the delivered model's weight bytes: int4 on {ratio:.0%} of the layers' weights")
    artifacts[NNCF_MIXED] = export_nncf_mixed(prepared.dense, staging / "nncf-mixed", ratio, calibration)


def _measure(prepared: Prepared, delivered: str, runtime: Runtime, torch_dense: Path, artifacts: dict[str, Path],
             held_out: HeldOut, log) -> _Measures:
    """Every model's held-out quality and size on the serving runtime, a causal LM's greedy
    text (dense and delivered), and the latency of all, dense PyTorch fp32 with them."""
    first: dict[Path, str] = {}  # each artifact measured once, under the first name it has
    for name, path in artifacts.items():
        first.setdefault(path, name)
    log(f"held-out quality of {len(first)} models on {runtime.name}")
    quality, generations = {}, {}
    for path, name in first.items():
        session = runtime.session(path)
        quality[name] = held_out.judge(session, same=name if name in SAME_EVERY_TARGET else None)
        shown = [n for n in (DENSE, delivered) if artifacts.get(n) == path]  # the text a user would see
        if prepared.dense.is_causal and shown:
            text = greedy_generations(session, prepared.dense.tokenizer, list(PROMPTS), GENERATED_TOKENS)
            generations.update(dict.fromkeys(shown, text))
    if generations:
        generations["prompts"] = list(PROMPTS)
    sizes = {name: runtime.size_bytes(artifact) for name, artifact in artifacts.items()}
    dense_size = get_runtime(REFERENCE).size_bytes(torch_dense)
    log(f"latency: {len(first) + 1} models, each in its own process, {prepared.setup.rounds} interleaved rounds")
    timed = [(REFERENCE, torch_dense, REFERENCE)] + [(name, path, runtime.name) for path, name in first.items()]
    latency = measure_latencies(timed, prepared.setup)
    for name, path in artifacts.items():
        quality[name], latency[name] = quality[first[path]], latency[first[path]]
    return _Measures(quality, generations, sizes, dense_size, latency)


def _move_delivered(prepared: Prepared, chosen: LoadedModel, runtime: Runtime, served: Path, staging: Path, out: Path) -> None:
    """The chosen searcher's model into out/model: PyTorch files that ppocompress.load
    reloads, beside an encoder's sentence-transformers files for the served artifact, or a
    decoder's OpenVINO GenAI folder (openvino/) when OpenVINO serves it."""
    model_dir = get_runtime(REFERENCE).export(chosen, staging / "delivered", [])
    if not prepared.dense.is_causal:
        write_sentence_transformers_files(chosen, model_dir, prepared.texts.calibration, served=(runtime.name, served))
    elif runtime.name == "openvino":
        shutil.copytree(served.parent, model_dir / LLM_FOLDER)
    move_into_place(model_dir, out / "model")
    shutil.rmtree(out / RECOVERY_CHECKPOINTS, ignore_errors=True)


def _measured(name: str, measures: _Measures, runtime: Runtime, prepared: Prepared | None = None, plan: Plan | None = None,
              result: SearchResult | None = None, recovered: LoadedModel | None = None) -> MeasuredModel:
    """The record of one model; a searcher's carries its plan, evaluations and predictions."""
    latency, reference = measures.latency, measures.latency[REFERENCE]
    model = MeasuredModel(name=name, runtime=runtime.name, latency=latency[name], speedup=reference.ms / latency[name].ms,
                          speedup_vs_dense_int8=latency[DENSE_INT8].ms / latency[name].ms, size_bytes=measures.sizes[name],
                          speedup_over_rounds=speedups_over_rounds(reference, latency[name]), **vars(measures.quality[name]))
    if plan is not None:
        model.levels = plan.chosen(prepared.menu)
        model.plan = prepared.evaluator.plan(plan).to_dict()
        model.evaluations = result.evaluations
        model.distillation = recovered.distillation
        if prepared.cost.unit == "ms":
            model.predicted_speedup, model.predicted_latency_ms = prepared.cost.speedup(plan), prepared.cost.total(plan)
    return model


def target_warnings(result: CompressResult) -> list[str]:
    """What the summary must not let pass silently: a delivered model measured short of its
    target, timings taken on a busy machine, a delivery slower than the dense int8 model a
    user could ship without us (for a speed target), or an alternative as fast (as small,
    for a size target) that keeps more quality."""
    delivered, size_target = result.delivered, result.target_kind == SIZE
    floor = result.floor
    warnings = _floor_warnings(result) if floor is not None else []
    if not delivers_dense_int8(floor):  # dense int8 had no target to meet
        warnings += _short_of_target(result)
    timed = (("dense PyTorch fp32", result.reference_latency), ("the delivered model", delivered.latency))
    busy = [f"{name} {latency.p10_ms:.0f} to {latency.p90_ms:.0f} ms p10 to p90" for name, latency in timed
            if latency.spread > UNQUIET_SPREAD]
    low, high = delivered.speedup_range()
    if high > low * (1 + UNQUIET_SPREAD):
        busy.append(f"the delivered speedup {low:.2f}x to {high:.2f}x from round to round")
    if busy:
        warnings.append(f"timings spread widely ({', '.join(busy)}): the machine was busy, so the speedups may be off; "
                        "time again with `ppocompress bench` when it is quiet")
    if delivered.speedup_vs_dense_int8 < 1.0 and not size_target:
        warnings.append(f"the delivered model is slower than the dense int8 model on {result.runtime} "
                        f"({delivered.speedup_vs_dense_int8:.2f}x); ship that instead or ask for a higher target")
    for name, alternative in result.alternatives.items():
        as_good = (alternative.size_bytes <= delivered.size_bytes * (1 + TARGET_TOLERANCE) if size_target
                   else alternative.speedup >= delivered.speedup * (1 - TARGET_TOLERANCE))
        if as_good and alternative.fidelity > delivered.fidelity:
            than = (f"small ({alternative.size_bytes / 1e6:.1f} MB)" if size_target else f"fast ({alternative.speedup:.2f}x)")
            warnings.append(f"{name} is as {than} and keeps more quality than the delivered "
                            f"model ({result.fidelity_short_name} {alternative.fidelity:.4f} against {delivered.fidelity:.4f}); "
                            "ship it instead")
    return warnings


def _floor_warnings(result: CompressResult) -> list[str]:
    """What the summary says plainly of a quality floor: that no plan met it (and whether
    dense int8, delivered instead, meets it), or that the delivered model, chosen on
    validation text, measured below it on held-out text."""
    floor, name, held_out = result.floor, result.fidelity_short_name, result.delivered.fidelity
    if not floor.met:
        best = max(floor.probes, key=lambda probe: probe.quality, default=None)
        int8 = ("which keeps it on held-out text" if held_out >= floor.min_quality
                else "which falls below it too; ask for a lower floor")
        best_made = ("none came near it in the search" if best is None
                     else f"the best, at {best.target} by {best.recovery}: {best.quality:.4f}")
        return [f"no target's plan keeps {name} {floor.min_quality:g} on validation text ({best_made}); the dense "
                f"int8 model is delivered ({held_out:.4f}), {int8}"]
    if held_out >= floor.min_quality:
        return []
    return [f"held-out {name} {held_out:.4f} is below the {floor.min_quality:g} floor that validation text met "
            f"({floor.chosen_probe.quality:.4f}); ask for a higher floor to keep a margin"]


def _short_of_target(result: CompressResult) -> list[str]:
    """A warning when the delivered model measured short of its target: slower than a speed
    target (by more than TARGET_TOLERANCE), or larger than a size target."""
    delivered = result.delivered
    if result.target_kind == SIZE:
        size = delivered.size_bytes / result.dense_size_bytes
        if size <= result.target_value * (1 + TARGET_TOLERANCE):
            return []
        return [f"measured size {size:.3f} of dense PyTorch fp32's, above the size {result.target_value:g} target "
                f"by {100 * (size / result.target_value - 1):.0f}%"]
    measured = {SPEEDUP: (delivered.speedup, "dense PyTorch fp32"),
                INT8_SPEEDUP: (delivered.speedup_vs_dense_int8, f"the dense int8 model on {result.runtime}")}
    speedup, against = measured.get(result.target_kind, (math.inf, ""))
    if speedup >= result.target_value * (1 - TARGET_TOLERANCE):
        return []
    predicted = ("" if delivered.predicted_speedup is None or result.target_kind != SPEEDUP
                 else f" (the latency table predicted {delivered.predicted_speedup:.2f}x)")
    return [f"measured {speedup:.2f}x against {against}, short of the {result.target_value:g}x "
            f"target by {100 * (1 - speedup / result.target_value):.0f}%{predicted}"]
