"""What `evaluate` and `bench` return (typed results), what their --json holds (those results
as dicts), and that the command line starts without the heavy libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from ppocompress.cli import main
from ppocompress.compress import CompressionPlan, LayerPlan
from ppocompress.compress.commands import bench as bench_module
from ppocompress.compress.commands import evaluate as evaluate_module
from ppocompress.compress.commands.bench import BenchRun, VariantResult
from ppocompress.compress.commands.evaluate import EvaluationReport, ModelMetrics, evaluate, evaluate_command
from ppocompress.compress.commands.runtime_choice import check_runtime, runtimes_for
from ppocompress.compress.data.text import Corpus, TextSplits, load_splits
from ppocompress.compress.measure.timing import TimingSetup
from ppocompress.compress.recovery.distillation import DEFAULT_MINUTES, DistillReport
from ppocompress.errors import UserError
from ppocompress.search.settings import FLOOR_DISTILL_MINUTES

PLAN = CompressionPlan([LayerPlan(keep_neurons=list(range(24))), LayerPlan(drop=True), LayerPlan(keep_groups=[0, 1])])


def dense_report(runtime: str = "torch") -> EvaluationReport:
    return EvaluationReport(model="tiny", model_type="bert", recovery=None, runtime=runtime, timing=TimingSetup(),
                            evaluation_texts=8, dense=ModelMetrics(params=100, size_bytes=400, flops_per_sequence=1000,
                                                                   lee_pearson=0.5, lee_spearman=0.4, mean_cosine=1.0,
                                                                   min_cosine=1.0, pairsim_spearman=1.0))


def distilled_report() -> EvaluationReport:
    return EvaluationReport(
        model="tiny", model_type="bert", recovery="lsq+distill", runtime="onnxruntime", timing=TimingSetup(threads=1),
        evaluation_texts=8, dense=ModelMetrics(params=100, size_bytes=400, flops_per_sequence=1000, lee_pearson=0.5,
                                               latency_torch_fp32_ms=2.0),
        compressed=ModelMetrics(params=60, size_bytes=240, flops_per_sequence=600, mean_cosine=0.9, latency_ms=1.0, speedup=2.0),
        distillation=DistillReport(steps=3, validation=[(0, 0.8), (3, 0.9)], best_step=3, best_fidelity=0.9, stopped="budget"),
        plan=PLAN)


def test_evaluate_command_returns_a_typed_report_of_the_compressed_model(tiny_dir, text_file):
    (report,) = evaluate_command(model=str(tiny_dir), plan=None, text=text_file, latency=False, threads=1)
    assert isinstance(report, EvaluationReport) and report.compressed is None and report.judged is report.dense
    assert report.recovery is None and report.plan is None and report.timing == TimingSetup.for_model(False, 1)
    assert 0.99 < report.dense.mean_cosine <= 1.0 + 1e-6 and report.dense.latency_ms is None
    # A user's text: neighbours over all its evaluation passages, and no documents, so no labelled task.
    assert report.dense.retrieval_passages == len(load_splits(text_file).evaluation) == 12
    assert report.dense.neighbour_recall_at_10 > 0.9 and report.dense.task_recall_at_10 is None
    assert "task_mrr" not in report.to_dict()["dense"] and "neighbour_recall_at_10" in report.to_dict()["dense"]


def test_evaluate_scores_retrieval_of_the_compressed_model_and_the_dense_ones_task(tiny_model):
    """The dense model's neighbours are the reference; its own task score (in PyTorch) is shown beside the compressed one's."""
    passages = [f"sentence {i} tells of {w} in the year {1900 + i}" for i, w in
                enumerate(["rivers", "kings", "music", "trade", "storms", "sport"] * 5)]
    corpus = Corpus(tuple(passages), ("news",) * 30, tuple(f"doc {i % 6}" for i in range(30)))
    texts = TextSplits(calibration=passages[:16], evaluation=passages[:8], validation=passages[16:20], corpus=corpus)
    report = evaluate(tiny_model("bert"), texts, PLAN, latency=False)
    assert report.dense.neighbour_recall_at_10 is None and 0 < report.dense.task_mrr <= 1
    assert 0 <= report.compressed.neighbour_recall_at_10 <= 1 and 0 < report.compressed.task_mrr <= 1
    assert report.dense.retrieval_passages == report.compressed.retrieval_passages == 30
    assert EvaluationReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_evaluate_command_judges_a_plan_on_the_compressed_model(tiny_dir, text_file, tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(PLAN.to_json())
    (report,) = evaluate_command(model=str(tiny_dir), plan=plan_path, text=text_file, recovery="lsq", latency=False)
    assert report.plan == PLAN and report.recovery == "lsq" and report.judged is report.compressed
    assert report.compressed.params < report.dense.params and 0 < report.compressed.mean_cosine <= 1.0 + 1e-6
    assert report.dense.mean_cosine is None and report.dense.lee_spearman is not None  # the dense model is not judged
    assert EvaluationReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_to_dict_leaves_out_what_an_evaluation_has_not_but_keeps_recovery():
    data = dense_report().to_dict()
    assert list(data) == ["model", "model_type", "recovery", "runtime", "timing", "evaluation_texts", "dense"]
    assert data["recovery"] is None and data["timing"] == TimingSetup().to_dict()
    assert data["dense"] == {"params": 100, "size_bytes": 400, "flops_per_sequence": 1000, "lee_pearson": 0.5,
                             "lee_spearman": 0.4, "mean_cosine": 1.0, "min_cosine": 1.0, "pairsim_spearman": 1.0}
    full = distilled_report().to_dict()
    assert full["plan"] == PLAN.to_dict() and full["distillation"]["validation"] == [(0, 0.8), (3, 0.9)]
    assert full["compressed"] == {"params": 60, "size_bytes": 240, "flops_per_sequence": 600, "mean_cosine": 0.9,
                                  "latency_ms": 1.0, "speedup": 2.0}


@pytest.mark.parametrize("report", [dense_report(), distilled_report()], ids=["dense", "distilled"])
def test_a_report_survives_its_json(report):
    assert EvaluationReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


@pytest.mark.parametrize("runtimes", [["torch"], ["torch", "onnxruntime"]], ids=["one", "two"])
def test_evaluate_json_prints_the_reports_as_dicts(monkeypatch, capsys, runtimes):
    """One runtime: its report; several: a list of them."""
    given = {}

    def fake(**options):
        given.update(options)
        return [dense_report(name) for name in runtimes]

    monkeypatch.setattr(evaluate_module, "evaluate_command", fake)
    assert main(["evaluate", "--runtime", "auto", "--threads", "2", "--no-latency", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = [dense_report(name).to_dict() for name in runtimes]
    assert printed == (expected[0] if len(runtimes) == 1 else expected)
    assert given["runtime"] == "auto" and given["threads"] == 2 and given["latency"] is False


def test_evaluate_prints_a_table_of_the_report(monkeypatch, capsys):
    report = distilled_report()
    report.compressed = replace(report.compressed, neighbour_recall_at_10=0.85, task_recall_at_10=0.9, retrieval_passages=5371)
    monkeypatch.setattr(evaluate_module, "evaluate_command", lambda **options: [report])
    assert main(["evaluate"]) == 0
    out = capsys.readouterr().out
    assert "tiny (bert) on onnxruntime" in out and "latency_torch_fp32_ms" in out and "distillation: 3 steps" in out
    rows = {line.split()[1]: line.split()[2:] for line in out.splitlines() if line.startswith("│")}
    assert rows["neighbour_recall_at_10"] == ["│", "-", "│", "0.8500", "│"] and rows["retrieval_passages"][-2] == "5,371"


def test_evaluate_json_holds_retrieval_under_the_same_names(monkeypatch, capsys):
    report = dense_report()
    report.dense = replace(report.dense, neighbour_recall_at_10=1.0, task_recall_at_10=0.9, task_mrr=0.7, retrieval_passages=5371)
    monkeypatch.setattr(evaluate_module, "evaluate_command", lambda **options: [report])
    assert main(["evaluate", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["dense"]
    expected = {"neighbour_recall_at_10": 1.0, "task_recall_at_10": 0.9, "task_mrr": 0.7, "retrieval_passages": 5371}
    assert {name: printed[name] for name in expected} == expected


def test_bench_json_holds_the_run_as_a_dict(monkeypatch, tiny_dir, text_file, tmp_path, capsys):
    variant = VariantResult(name="dense", runtime="torch", params=10, size_bytes=40, cosine_heldout=1.0, latency_ms=3.0,
                            latency_median_ms=3.5, speedup=1.0)
    timed = []

    def fake_run_bench(dense, texts, names, setup, log):
        timed.append((names, setup))
        return [variant]

    monkeypatch.setattr(bench_module, "run_bench", fake_run_bench)
    json_file = tmp_path / "not" / "yet" / "bench.json"
    assert main(["bench", "--model", str(tiny_dir), "--text", str(text_file), "--runtime", "torch", "--threads", "1",
                 "--batch-size", "4", "--seq-len", "16", "--rounds", "1", "--json", str(json_file)]) == 0
    setup = TimingSetup(batch_size=4, seq_len=16, threads=1, rounds=1)
    assert timed == [(["torch"], setup)]
    run = BenchRun(str(tiny_dir), False, setup, [variant])
    assert json.loads(json_file.read_text()) == run.to_dict() == {"model": str(tiny_dir), "timing": setup.to_dict(),
                                                                  "variants": [variant.to_dict()]}
    assert "dense" in capsys.readouterr().out


def test_bench_options_default_to_the_timing_defaults(monkeypatch):
    given = {}

    def fake(**options):
        given.update(options)
        return BenchRun("tiny", False, TimingSetup(), [])

    monkeypatch.setattr(bench_module, "bench_command", fake)
    assert main(["bench"]) == 0
    default = TimingSetup()
    assert (given["batch_size"], given["seq_len"], given["rounds"], given["threads"]) == (
        default.batch_size, default.seq_len, default.rounds, default.threads)


def test_a_runtime_is_checked_before_anything_loads(capsys):
    with pytest.raises(UserError, match="unknown runtime 'tpu'; use one of auto, torch"):
        check_runtime("tpu")
    assert runtimes_for("torch", causal=False) == ["torch"]
    for command in (["evaluate", "--runtime", "tpu"], ["bench", "--runtime", "tpu"]):
        assert main([*command, "--model", "/no/such/model"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "unknown runtime 'tpu'" in err  # the runtime fails first, not the model


def test_help_states_the_distillation_default():
    """The help cannot import the constant (it would load torch), so it is checked here."""
    result = subprocess.run([sys.executable, "-m", "ppocompress.cli", "evaluate", "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "400"})
    stated = f"model distilled. Default {DEFAULT_MINUTES:g} ({FLOOR_DISTILL_MINUTES:g} for a quality floor's second try)."
    assert "--recover-minutes" in result.stdout and stated in result.stdout


def test_help_loads_neither_torch_nor_transformers():
    code = ("import sys; from ppocompress.cli import main\n"
            "for command in ([], ['rl'], ['evaluate'], ['bench'], ['compress'], ['report']):\n"
            "    assert main([*command, '--help']) == 0\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
