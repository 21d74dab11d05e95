"""The search state and result.json, typed: what is saved reads back equal, and a file of
another format or with fields this version does not know is refused in one line."""

from __future__ import annotations

import json

import pytest

from ppocompress.compress.measure.timing import LatencyResult, TimingSetup
from ppocompress.compress.recovery.distillation import DistillReport
from ppocompress.errors import UserError
from ppocompress.search.levels import default_menu
from ppocompress.search.plan import Plan
from ppocompress.search.recorder import Evaluation, SearchResult
from ppocompress.search.results import CompressResult, MeasuredModel
from ppocompress.search.state import STATE_FORMAT, Measurements, SearchState

MENU = default_menu()


def a_result(name: str = "ppo") -> SearchResult:
    evaluated = [Evaluation(Plan.of([0, 3, 32]), 1.25, 1.5), Evaluation(Plan.of([5, 5, 5]), 2.5, 2.25)]
    return SearchResult(name, evaluated[1].plan, 2.5, 2, [(1, 1.25), (2, 2.5)], evaluated)


def a_state() -> SearchState:
    measured = Measurements(importance=[{"groups": [1.0, 0.5], "neurons": [0.25], "block_influence": 0.125}],
                            importance_seconds=3.5, runtime="onnxruntime", dense_ms={"torch": 20.0, "onnxruntime int8": 5.0},
                            sensitivity=[[0.0, 0.125], [0.0, 0.5]], sensitivity_baseline=0.0625, drop_pairs=[[0.75]],
                            run_seconds={"preparation": 12.5})
    return SearchState({"model": None, "target_speedup": 2.0}, {Plan.of([0, 3, 32]): 1.25, Plan.of([5, 5, 5]): 2.5},
                       {"ppo": a_result(), "uniform 2x": a_result("uniform")}, measured)


def test_a_saved_state_loads_back_equal(tmp_path):
    state = a_state()
    state.save(tmp_path / "state.json")
    loaded = SearchState.load(tmp_path / "state.json")
    assert loaded == state
    assert all(isinstance(plan, Plan) for plan in loaded.evaluations)
    assert all(isinstance(e, Evaluation) for result in loaded.finished.values() for e in result.evaluated)
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["format"] == STATE_FORMAT and saved["evaluations"] == {"0,3,32": 1.25, "5,5,5": 2.5}


def test_measurements_say_whether_any_was_taken():
    assert not Measurements().taken()
    assert Measurements(runtime="torch").taken() and Measurements(sensitivity=[[0.0]]).taken()
    assert Measurements.from_dict(a_state().measurements.to_dict()) == a_state().measurements


def test_a_state_of_the_format_before_is_refused_in_one_line(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"format": "ppocompress.search-state/1", "settings": {}, "evaluations": {}, "finished": {},
                                "extras": {"runtime": "torch"}}))
    with pytest.raises(UserError) as refused:
        SearchState.load(path)
    message = str(refused.value)
    assert "is not a search state this version reads" in message and "start without --resume" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("change, words", [
    (lambda data: data["measurements"].update(extras=1), "does not match the search state's schema"),
    (lambda data: data["evaluations"].update({"a,b": 1.0}), "does not match the search state's schema"),
    (lambda data: data["finished"]["ppo"].pop("best_plan"), "does not match the search state's schema"),
    (lambda data: data.pop("measurements"), "lacks the field 'measurements'"),
])
def test_a_state_this_version_cannot_read_is_refused_in_one_line(tmp_path, change, words):
    path = tmp_path / "state.json"
    a_state().save(path)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=words) as refused:
        SearchState.load(path)
    assert len(str(refused.value).splitlines()) == 1 and "start without --resume" in str(refused.value)


def measured(name: str, plan: Plan | None = None) -> MeasuredModel:
    latency = LatencyResult("onnxruntime", 10.0, 9.5, 10.0, 11.0, 30, round_ms=[10.0, 10.5])
    model = MeasuredModel(name=name, runtime="onnxruntime", latency=latency, speedup=2.0, speedup_vs_dense_int8=1.25,
                          size_bytes=1000, cosine_heldout=0.99, cosine_heldout_min=0.9, lee_pearson=0.8,
                          neighbour_recall_at_10=0.85, task_recall_at_10=0.9, task_mrr=0.7, retrieval_passages=5371,
                          speedup_over_rounds=[2.0, 2.1])
    if plan is not None:
        model.levels, model.plan, model.evaluations = plan.chosen(MENU), {"layers": [], "head": "float"}, 2
        model.distillation = DistillReport(steps=3, validation=[(0, 0.9), (3, 0.95)], stopped="budget")
    return model


def test_a_result_written_to_json_reads_back_equal_with_its_levels_and_evaluations(tmp_path):
    search = a_result()
    result = CompressResult(model="m", runtime="onnxruntime", target_kind="speedup", target_value=2.0, searcher="ppo",
                            timing=TimingSetup(), reference_latency=LatencyResult("torch", 20.0, 19.0, 20.0, 21.0, 30),
                            dense_lee_pearson=0.8, dense_size_bytes=4000, searchers={"ppo": measured("ppo", search.best_plan)},
                            dense=measured("dense"), dense_int8=measured("dense int8"), sensitivity_evaluations=96,
                            curves={"ppo": search.curve}, evaluated={"ppo": search.evaluated}, warnings=["w"])
    (tmp_path / "result.json").write_text(result.to_json())
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["searchers"]["ppo"]["levels"] == search.best_plan.names(MENU)  # by name, for people
    assert saved["evaluated"]["ppo"] == [[[0, 3, 32], 1.25, 1.5], [[5, 5, 5], 2.5, 2.25]]
    read = CompressResult.from_file(tmp_path / "result.json")
    assert read.evaluated == result.evaluated and read.delivered.levels == search.best_plan.chosen(MENU)
    assert read.to_json() == result.to_json() and read.dense == result.dense
    assert (read.delivered.neighbour_recall_at_10, read.dense.task_mrr, read.dense_int8.retrieval_passages) == (0.85, 0.7, 5371)
    for model in ("dense", "dense_int8"):  # a result.json from before retrieval was judged
        for field in ("neighbour_recall_at_10", "task_recall_at_10", "task_mrr", "retrieval_passages"):
            del saved[model][field]
    (tmp_path / "result.json").write_text(json.dumps(saved))
    older = CompressResult.from_file(tmp_path / "result.json")
    assert older.dense.task_mrr is None and older.dense.cosine_heldout == 0.99 and older.delivered.task_mrr == 0.7


def test_a_result_naming_a_level_no_menu_has_is_refused_in_one_line(tmp_path):
    result = json.loads(CompressResult(
        model="m", runtime="torch", target_kind="speedup", target_value=2.0, searcher="ppo", timing=TimingSetup(),
        reference_latency=LatencyResult("torch", 20.0, 19.0, 20.0, 21.0, 30), dense_lee_pearson=None, dense_size_bytes=1,
        searchers={"ppo": measured("ppo", Plan.of([0, 1, 2]))}, dense=measured("dense"), dense_int8=measured("dense int8"),
        sensitivity_evaluations=0).to_json())
    result["searchers"]["ppo"]["levels"][1] = "h50-f50-int2"
    (tmp_path / "result.json").write_text(json.dumps(result))
    with pytest.raises(UserError, match="does not match the result schema") as refused:
        CompressResult.from_file(tmp_path / "result.json")
    assert len(str(refused.value).splitlines()) == 1


@pytest.mark.parametrize("resume", [False, True])
def test_another_versions_interrupted_state_is_neither_overwritten_nor_resumed(job_inputs, tmp_path, capsys, resume):
    from ppocompress.cli import main

    model_dir, text = job_inputs
    out = tmp_path / "run"
    out.mkdir()
    old = json.dumps({"format": "ppocompress.search-state/1", "settings": {}, "evaluations": {"0,0": 1.0},
                      "finished": {}, "extras": {"sensitivity": [[0.0]]}})
    (out / "state.json").write_text(old)
    code = main(["compress", "--model", str(model_dir), "--text", str(text), "--cost", "flops", "--evals", "4",
                 "--out", str(out), *(["--resume"] if resume else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "ppocompress.search-state/1" in err[0]
    assert (out / "state.json").read_text() == old
