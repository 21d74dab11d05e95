"""The main job end to end on a tiny model, and resuming an interrupted run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from compress_models import save_tiny_model

import ppocompress
from ppocompress.cli import main
from ppocompress.search import job as job_module
from ppocompress.search.job import CompressSettings, run_compress
from ppocompress.search.results import CompressResult

LINES = [f"passage {i} is about {w} and how it changes over the years" for i, w in
         enumerate(["rivers", "cities", "music", "trade", "weather", "sport", "law", "food", "roads", "stars"] * 12)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    text = root / "text.txt"
    text.write_text("\n".join(LINES))
    return save_tiny_model("bert", root / "bert"), text


def settings(model_dir, text, **overrides) -> CompressSettings:
    values = dict(model=str(model_dir), target_speedup=1.5, searcher="ppo", evals=24, recovery="lsq", seed=0,
                  baselines=False, text=str(text), cost="flops", runtime="onnxruntime", calibration_texts=80, evaluation_texts=36)
    values.update(overrides)
    return CompressSettings(**values)


@pytest.mark.slow  # latency subprocesses, ONNX export, NNCF
def test_compress_end_to_end_writes_everything(setup, tmp_path, capsys):
    model_dir, text = setup
    out = tmp_path / "run"
    code = main(["compress", "--model", str(model_dir), "--target-speedup", "1.5", "--evals", "24", "--cost", "flops",
                 "--text", str(text), "--out", str(out), "--no-baselines", "--recover", "lsq+distill", "--recover-minutes", "0.05"])
    assert code == 0
    result = CompressResult.from_file(out / "result.json")
    assert result.delivered.distillation.steps >= 1 and result.delivered.distillation.stopped
    assert not (out / ".recovery").exists()  # the distillation's checkpoint, gone once the model is delivered
    assert result.runtime == "openvino"  # auto without timing prefers it when it is installed
    delivered = result.delivered
    assert result.searcher == "ppo" and set(result.searchers) == {"ppo"}
    assert delivered.evaluations <= 24 and 0 < delivered.cosine_heldout <= 1.0 + 1e-6
    for model in (delivered, result.dense, result.dense_int8):
        assert model.latency.ms > 0 and model.speedup == pytest.approx(result.reference_latency.ms / model.latency.ms)
        assert model.speedup_vs_dense_int8 == pytest.approx(result.dense_int8.latency.ms / model.latency.ms)
        assert model.size_bytes > 0 and model.runtime == "openvino"
    assert ppocompress.load(out / "model").plan is not None
    for name in ("modules.json", "config.json", "1_Pooling/config.json", "onnx/model.onnx", "openvino/openvino_model.xml",
                 "openvino/openvino_model.bin"):
        assert (out / "model" / name).stat().st_size > 0
    for name in ("report.html", "policy.png", "search_curve.png", "pareto.png"):
        assert (out / name).exists()
    assert not list(out.glob(".staging-*"))
    *summary, done = capsys.readouterr().out.splitlines()  # the last line is key=value for scripts
    assert any("dense int8" in line for line in summary) and max(len(line) for line in summary) <= 80
    assert any("distillation:" in line for line in summary)
    assert done.startswith("done searcher=ppo runtime=openvino ")
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()


def test_resume_after_interruption_gives_the_same_plan(setup, tmp_path, monkeypatch):
    model_dir, text = setup
    plain = settings(model_dir, text)

    def skip_delivery(prepared, settings, finals, results, out, log):
        plan = prepared.evaluator.plan(finals[settings.searcher]).to_dict()
        return SimpleNamespace(plan=plan, to_json=lambda: "{}")

    monkeypatch.setattr(job_module, "deliver", skip_delivery)
    monkeypatch.setattr("ppocompress.search.report.write_report", lambda out: None)
    uninterrupted = run_compress(plain, tmp_path / "a", log=lambda _: None)

    calls = {"n": 0}
    original = job_module.PlanEvaluator.quality

    def dies_midway(self, levels, fidelity="low"):
        calls["n"] += 1
        if calls["n"] == 3 * 33 + 12:  # after the sensitivities and part of the search
            raise KeyboardInterrupt
        return original(self, levels, fidelity)

    monkeypatch.setattr(job_module.PlanEvaluator, "quality", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run_compress(plain, tmp_path / "b", log=lambda _: None)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert 0 < len(state["evaluations"]) < 24 and not state["finished"]
    monkeypatch.setattr(job_module.PlanEvaluator, "quality", original)
    resumed = run_compress(plain, tmp_path / "b", resume=True, log=lambda _: None)
    assert resumed.plan == uninterrupted.plan


def test_resume_refuses_other_settings_and_missing_state(setup, tmp_path, capsys):
    model_dir, text = setup
    assert main(["compress", "--model", str(model_dir), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["compress", "--target-speedup", "2", "--target-size", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "exactly one of" in capsys.readouterr().err
