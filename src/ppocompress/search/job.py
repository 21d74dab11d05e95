"""`ppocompress compress`: search a plan, deliver the compressed model, measure it.

1. load the model and text; importance scores; the cost table (measured once, cached);
2. one-off sensitivities; then each searcher (the chosen one, and the baselines) with the
   same number of evaluations; state saved every few evaluations (see state.py);
3. the best plans re-scored on more calibration text (multi-fidelity), the best kept;
4. recovery, export (safetensors + plan, ONNX), and measurement on held-out text and in
   separate latency processes against the dense model in PyTorch and in ONNX Runtime.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ppocompress.compress import load_model, save
from ppocompress.compress.apply import quantize_planned_layers
from ppocompress.compress.cost import directory_bytes, measure_latencies
from ppocompress.compress.importance import importance_scores
from ppocompress.compress.onnx_export import export_onnx, export_planned_onnx
from ppocompress.compress.pipeline import compress
from ppocompress.compress.quality import (LEE_MAX_LENGTH, embed, embed_onnx, embedding_fidelity, lee_correlation,
                                          lee_correlation_of, usable_positions)
from ppocompress.compress.text import lee_documents, load_splits, subset
from ppocompress.errors import UserError
from ppocompress.fileio import atomic_write_text, move_into_place
from ppocompress.search.cost_table import anchor_reference, flops_table, measured_table
from ppocompress.search.env import CompressionEnv, Target
from ppocompress.search.evaluator import HIGH_FIDELITY, PlanEvaluator, reward_from_cosine, sensitivity_table
from ppocompress.search.levels import default_menu
from ppocompress.search.searchers import SEARCHERS, SearchResult, run_searcher
from ppocompress.search.state import SearchState

SAVE_EVERY = 5  # evaluations between state saves


@dataclass
class CompressSettings:
    model: str | None = None
    target_speedup: float | None = 3.0
    target_size: float | None = None
    searcher: str = "ppo"
    evals: int = 200
    recover: str = "lsq"
    seed: int = 0
    baselines: bool = True
    threads: int = 2
    text: str | None = None
    cost: str = "measured"  # or "flops"
    calibration_texts: int = 1024
    evaluation_texts: int = 512

    def target(self) -> Target:
        if (self.target_speedup is None) == (self.target_size is None):
            raise UserError("give exactly one of --target-speedup and --target-size")
        return Target("speedup", self.target_speedup) if self.target_speedup is not None else Target("size", self.target_size)

    def validate(self) -> None:
        self.target()
        if self.searcher not in SEARCHERS:
            raise UserError(f"unknown searcher {self.searcher!r}; use one of {', '.join(SEARCHERS)}")
        if self.evals < 1:
            raise UserError(f"--evals must be >= 1, got {self.evals}")
        if self.cost not in ("measured", "flops"):
            raise UserError(f"--cost must be measured or flops, got {self.cost!r}")


def run_compress(settings: CompressSettings, out: Path, resume: bool = False, log=print) -> dict:
    settings.validate()
    target = settings.target()
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

    dense = load_model(settings.model)
    texts = subset(load_splits(settings.text), settings.calibration_texts, settings.evaluation_texts)
    log(f"model {dense.source}: importance scores on {min(256, len(texts.calibration))} calibration passages")
    scores = importance_scores(dense, texts.calibration[:256])
    menu = default_menu()
    if target.kind == "size":
        cost = flops_table(dense, menu)  # parameters scale like FLOPs per layer; int8 is priced by its discount
    elif settings.cost == "measured":
        cost = measured_table(dense, menu, threads=settings.threads, log=log)
        if "reference_ms" not in state.extras:  # timed once a run; a resumed run keeps its budget
            state.extras["reference_ms"] = anchor_reference(cost, dense, threads=settings.threads, log=log).reference_total
            state.save(state_path)
        cost = replace(cost, reference=state.extras["reference_ms"])
    else:
        cost = flops_table(dense, menu)
    # The search prices least-squares recovery in (distillation starts from it), refit on
    # calibration text apart from the passages plans are scored on.
    search_recovery = "none" if settings.recover == "none" else "lsq"
    evaluator = PlanEvaluator(dense, menu, scores, texts.calibration, recovery=search_recovery,
                              recovery_texts=texts.calibration[HIGH_FIDELITY:] or texts.calibration,
                              int8_backend=cost.backend or "onnxruntime")
    if "sensitivity" not in state.extras:
        log(f"sensitivity of {len(scores)} layers x {len(menu)} levels (once)")
        state.extras["sensitivity"] = sensitivity_table(evaluator)
        state.save(state_path)
    features = np.array([[s.block_influence, float(s.neurons.std() / (s.neurons.mean() + 1e-12))] for s in scores])

    def make_env(score) -> CompressionEnv:
        return CompressionEnv(cost, menu, target, score, features, np.array(state.extras["sensitivity"]))

    def score(levels: list[int]) -> float:
        key = SearchState.key(levels)
        if key not in state.evaluations:
            state.evaluations[key] = reward_from_cosine(evaluator.quality(levels))
            if len(state.evaluations) % SAVE_EVERY == 0:
                state.save(state_path)
        return state.evaluations[key]

    order = [settings.searcher] + ([s for s in SEARCHERS if s != settings.searcher] if settings.baselines else [])
    results: dict[str, SearchResult] = {}
    for name in order:
        if name in state.finished:
            results[name] = SearchResult(**{k: v for k, v in state.finished[name].items() if k != "evaluated"},
                                         evaluated=[tuple(e) for e in state.finished[name]["evaluated"]])
            continue
        with Progress(TextColumn(f"[bold]{name:>12}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
                      TimeElapsedColumn()) as bar:
            task = bar.add_task(name, total=settings.evals, best="")

            def show(recorder) -> None:
                best = 1.0 - math.exp(-recorder.best_reward)
                bar.update(task, completed=len(recorder.cache), best=f"best cosine {best:.4f}")

            results[name] = run_searcher(name, make_env, score, settings.evals, settings.seed, on_evaluation=show)
        state.finished[name] = results[name].to_dict()
        state.save(state_path)

    log("re-scoring the best plans on more calibration text")
    finals = {name: _best_at_high_fidelity(evaluator, result) for name, result in results.items()}
    report = _deliver(dense, texts, evaluator, cost, settings, finals, results, out, log)
    # Shared by every searcher and outside their budgets, but evaluations all the same.
    report["sensitivity_evaluations"] = len(scores) * (len(menu) - 1)
    atomic_write_text(out / "result.json", json.dumps(report, indent=1))
    from ppocompress.search.report import write_report

    write_report(out)
    return report


def _best_at_high_fidelity(evaluator: PlanEvaluator, result: SearchResult, top: int = 3) -> list[int]:
    candidates = sorted(result.evaluated, key=lambda e: e[1], reverse=True)[:top]
    return max((list(levels) for levels, _, _ in candidates), key=lambda levels: evaluator.quality(levels, "high"))


def _deliver(dense, texts, evaluator, cost, settings, finals, results, out: Path, log) -> dict:
    """Every searcher's best plan recovered, exported for both backends, judged on held-out
    text and timed; the chosen searcher's model is moved into `out`."""
    reference = embed(dense.model, dense.tokenizer, texts.evaluation)
    dense_lee = lee_correlation(dense.model, dense.tokenizer)["pearson"]
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        save(dense, staging / "dense")
        onnx_dense = export_onnx(dense.model, dense.tokenizer, staging / "dense.onnx")
        summaries, paths = {}, {}
        targets = [("dense torch", staging / "dense", "torch"), ("dense onnxruntime", onnx_dense, "onnxruntime")]
        for name, levels in finals.items():
            log(f"{name}: recovery {settings.recover}, export and held-out quality")
            summaries[name], paths[name] = _build_and_judge(dense, evaluator.plan(levels), settings.recover, texts,
                                                            reference, staging / name)
            summaries[name].update(
                searcher=name, evaluations=results[name].evaluations, levels=[evaluator.menu[i].name for i in levels],
                target_speedup=settings.target_speedup, target_size=settings.target_size,
                predicted_speedup=cost.speedup(levels) if cost.unit == "ms" else None,
                predicted_latency_ms=cost.total(levels) if cost.unit == "ms" else None,
                predicted_reference_ms=cost.reference_total if cost.unit == "ms" else None,
                dense_lee_pearson=dense_lee, dense_size_bytes=directory_bytes(staging / "dense" / "model.safetensors"))
            targets += [(f"{name} torch", paths[name]["torch"], "torch"),
                        (f"{name} onnxruntime", paths[name]["onnxruntime"], "onnxruntime")]
        log(f"latency: {len(targets)} models, each in its own process, interleaved")
        latency = measure_latencies(targets, rounds=3, batch_size=32, seq_len=64, threads=settings.threads)
        # 10th percentiles, as in the cost table: on this shared machine the medians of 5
        # rounds were up to 22% off the table's predictions, the 10th percentiles within 5%.
        for name, summary in summaries.items():
            times = {backend: latency[f"{name} {backend}"].p10_ms for backend in ("torch", "onnxruntime")}
            backend = min(times, key=times.get)  # the backend the tool recommends: the faster one
            summary.update(
                backend=backend, latency_ms=times[backend], latency_torch_ms=times["torch"],
                latency_onnxruntime_ms=times["onnxruntime"], dense_latency_ms=latency["dense torch"].p10_ms,
                latency_median_ms=latency[f"{name} {backend}"].median_ms, dense_latency_median_ms=latency["dense torch"].median_ms,
                measured_speedup=latency["dense torch"].p10_ms / times[backend],
                measured_speedup_vs_onnx_dense=latency["dense onnxruntime"].p10_ms / times[backend],
                cosine_heldout=summary[f"cosine_heldout_{backend}"], cosine_heldout_min=summary[f"cosine_heldout_min_{backend}"],
                lee_pearson=summary[f"lee_pearson_{backend}"])
        move_into_place(paths[settings.searcher]["torch"], out / "model")
        move_into_place(paths[settings.searcher]["onnxruntime"], out / "model.onnx")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = dict(summaries[settings.searcher])
    report["model"] = dense.source
    report["latency_table"] = {"backend": cost.backend, "largest_error_on_mixed_plans": cost.fit_error()} if cost.unit == "ms" else None
    report["curves"] = {name: r.curve for name, r in results.items()}
    report["evaluated"] = {name: [[levels, reward, speedup] for levels, reward, speedup in r.evaluated] for name, r in results.items()}
    report["baselines"] = {name: s for name, s in summaries.items() if name != settings.searcher}
    return report


def _build_and_judge(dense, plan, recover: str, texts, reference, workdir: Path) -> tuple[dict, dict[str, Path]]:
    """The plan's model, recovered, saved for PyTorch (safetensors + plan) and exported for
    ONNX Runtime (int8 where the plan says), each judged on held-out text and Lee."""
    fp32 = compress(dense, plan, recover, texts.calibration, quantize=False)
    onnx_path = export_planned_onnx(fp32, plan, workdir)
    compressed = copy.deepcopy(fp32)
    quantize_planned_layers(compressed.model, plan)
    model_dir = save(compressed, workdir / "model")
    positions = usable_positions(dense.model)  # embed() caps inputs so; the ONNX graph needs the same cap
    held_out = {"torch": embed(compressed.model, compressed.tokenizer, texts.evaluation),
                "onnxruntime": embed_onnx(onnx_path, dense.tokenizer, texts.evaluation, max_length=min(128, positions))}
    lee_documents_onnx = embed_onnx(onnx_path, dense.tokenizer, lee_documents(), max_length=min(LEE_MAX_LENGTH, positions))
    lee = {"torch": lee_correlation(compressed.model, compressed.tokenizer)["pearson"],
           "onnxruntime": lee_correlation_of(lee_documents_onnx)["pearson"]}
    summary = {"plan": plan.to_dict(), "size_bytes": directory_bytes(model_dir / "model.safetensors"),
               "onnx_size_bytes": directory_bytes(onnx_path)}
    for backend, embeddings in held_out.items():
        fidelity = embedding_fidelity(reference, embeddings)
        summary[f"cosine_heldout_{backend}"] = fidelity["mean_cosine"]
        summary[f"cosine_heldout_min_{backend}"] = fidelity["min_cosine"]
        summary[f"lee_pearson_{backend}"] = lee[backend]
    return summary, {"torch": model_dir, "onnxruntime": onnx_path}
