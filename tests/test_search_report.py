"""The report and the terminal summary, rebuilt from result.json files written here (no
run): plans read back by their levels' names, shown by name and short name."""

from __future__ import annotations

import json

import pytest

from ppocompress.compress.measure.timing import LatencyResult, TimingSetup
from ppocompress.errors import UserError
from ppocompress.reporting import print_compress, print_target_set
from ppocompress.search.files import RESULT_FILE, TARGET_SET_FILE
from ppocompress.search.levels import default_menu
from ppocompress.search.plan import Plan
from ppocompress.search.recorder import Evaluation
from ppocompress.search.report import write_report
from ppocompress.search.results import RESULT_FORMAT, CompressResult, MeasuredModel, TargetSetResult

MENU = default_menu()
PLAN = Plan.of([0, 22, 32])  # dense, h75-f50-int8, drop


def measured(name: str, speedup: float, plan: Plan | None = None) -> MeasuredModel:
    latency = LatencyResult("onnxruntime", 20.0 / speedup, 19.0 / speedup, 20.0 / speedup, 21.0 / speedup, 30)
    model = MeasuredModel(name=name, runtime="onnxruntime", latency=latency, speedup=speedup, speedup_vs_dense_int8=speedup / 2,
                          size_bytes=1000, cosine_heldout=0.99, cosine_heldout_min=0.9, lee_pearson=0.8)
    if plan is not None:
        model.levels, model.evaluations, model.predicted_speedup = plan.chosen(MENU), 2, speedup
    return model


def result(target: float) -> CompressResult:
    evaluated = [Evaluation(Plan.uniform(0, 3), 5.0, 1.0), Evaluation(PLAN, 3.0, 2.5)]
    return CompressResult(model="tiny", runtime="onnxruntime", target_kind="speedup", target_value=target, searcher="ppo",
                          timing=TimingSetup(), reference_latency=LatencyResult("torch", 20.0, 19.0, 20.0, 21.0, 30),
                          dense_lee_pearson=0.8, dense_size_bytes=4000, searchers={"ppo": measured("ppo", 2.5, PLAN)},
                          dense=measured("dense", 1.2), dense_int8=measured("dense int8", 2.0), sensitivity_evaluations=96,
                          curves={"ppo": [(1, 5.0), (2, 5.0)]}, evaluated={"ppo": evaluated})


def test_a_runs_report_shows_each_layers_level_by_name(tmp_path, capsys):
    (tmp_path / RESULT_FILE).write_text(result(2.0).to_json())
    page = write_report(tmp_path).read_text()
    assert "<td>h100-f100</td><td>h75-f50-int8</td><td>drop</td>" in page and "Target 2x speedup." in page
    assert all((tmp_path / name).stat().st_size > 0 for name in ("policy.png", "search_curve.png", "pareto.png"))
    print_compress(CompressResult.from_file(tmp_path / RESULT_FILE))
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[1:] == ["h100f100", "h75f50q", "-"] for line in lines if line.startswith("  ppo"))
    assert max(map(len, lines)) <= 80


def test_a_target_sets_report_and_summary_cover_every_member(tmp_path, capsys):
    folders = ["target-2x", "target-2.5x"]
    for folder, target in zip(folders, (2.0, 2.5)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / RESULT_FILE).write_text(result(target).to_json())
    members = [CompressResult.from_file(tmp_path / folder / RESULT_FILE) for folder in folders]
    (tmp_path / TARGET_SET_FILE).write_text(TargetSetResult(members, folders, {"ppo": 2}, None).to_json())
    page = write_report(tmp_path).read_text()
    assert all(f'<a href="{folder}/report.html">' in page for folder in folders) and (tmp_path / "family_plans.png").exists()
    assert all((tmp_path / folder / "report.html").exists() for folder in folders)
    print_target_set(TargetSetResult.from_dir(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.split()[1:] == ["h100f100", "h75f50q", "-"] for line in lines) == 2
    assert json.loads((tmp_path / TARGET_SET_FILE).read_text())["format"] == "ppocompress.family/1"


def with_retrieval(model: MeasuredModel, recall: float, task: float | None) -> MeasuredModel:
    model.neighbour_recall_at_10, model.retrieval_passages = recall, 5371
    model.task_recall_at_10, model.task_mrr = task, None if task is None else task - 0.2
    return model


def test_the_summary_shows_retrieval_within_80_columns_with_every_searcher(tmp_path, capsys):
    """The widest summary an encoder's run gives: five searchers, the longest name, a 3-digit size."""
    run = result(2.0)
    for name in ("evolutionary", "uniform", "random", "estimate"):
        run.searchers[name] = measured(name, 12.3, PLAN)
    for model in (*run.searchers.values(), run.dense, run.dense_int8):
        with_retrieval(model, 0.8523, 0.9133).size_bytes = 113_500_000
    with_retrieval(run.dense, 1.0, 0.9412)
    (tmp_path / RESULT_FILE).write_text(run.to_json())
    print_compress(CompressResult.from_file(tmp_path / RESULT_FILE))
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 80
    assert any(line.startswith("│ evolutionary") and "0.852 │ 0.913" in line for line in lines)
    assert any(line.startswith("│ dense ") and "1.000 │ 0.941" in line for line in lines)
    assert "5,371 held-out passages" in " ".join(lines)


def test_the_report_shows_retrieval_and_says_when_the_task_is_absent(tmp_path):
    run = result(2.0)
    with_retrieval(run.delivered, 0.8523, 0.9133)
    with_retrieval(run.dense, 1.0, 0.9412)
    (tmp_path / RESULT_FILE).write_text(run.to_json())
    page = write_report(tmp_path).read_text()
    assert "<th>neighbour recall@10 held-out</th>" in page and "<th>task MRR held-out</th>" in page
    assert "Among 5,371 held-out passages, it finds 85.2% of the dense model" in page
    assert "91.3% of the queries, MRR 0.713 (the dense model on onnxruntime: 94.1%, MRR 0.741)" in page
    with_retrieval(run.delivered, 0.8523, None)
    with_retrieval(run.dense, 1.0, None)
    (tmp_path / RESULT_FILE).write_text(run.to_json())
    page = write_report(tmp_path).read_text()
    assert "documents are unknown, so there is no labelled task" in page and "<td>-</td>" in page


def test_a_result_of_format_2_reads_unless_its_floor_probes_lack_their_recovery(tmp_path):
    """Format 3 added a floor probe's recovery, so an older result without a floor still
    reads (and is written back as format 3); one with a floor is refused in one line."""
    data = json.loads(result(2.0).to_json()) | {"format": "ppocompress.result/2"}
    (tmp_path / RESULT_FILE).write_text(json.dumps(data))
    assert CompressResult.from_file(tmp_path / RESULT_FILE).format == RESULT_FORMAT
    data["floor"] = {"min_quality": 0.98, "probes": [{"target": "2x", "quality": 0.97}], "chosen": None}
    (tmp_path / RESULT_FILE).write_text(json.dumps(data))
    with pytest.raises(UserError, match="does not match the result schema"):
        CompressResult.from_file(tmp_path / RESULT_FILE)
