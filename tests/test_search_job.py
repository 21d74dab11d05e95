"""The main job end to end on a tiny model, and resuming an interrupted run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import ppocompress
from ppocompress.cli import main
from ppocompress.compress import Precision, layer_table, load_model
from ppocompress.errors import UserError
from ppocompress.reporting import print_compress
from ppocompress.rl.ppo import SAVE_FORMAT as PPO_SAVE_FORMAT
from ppocompress.search import job as job_module
from ppocompress.search import prepare as prepare_module
from ppocompress.search.env import Target
from ppocompress.search.evaluator import PlanEvaluator
from ppocompress.search.floor import SKIP_MARGIN
from ppocompress.search.job import CompressSettings, run_compress
from ppocompress.search.levels import default_menu
from ppocompress.search.results import CompressResult, TargetSetResult
from ppocompress.search.searchers import SEARCHERS


@pytest.fixture(scope="session")
def setup(job_inputs):
    return job_inputs


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
                 "--text", str(text), "--out", str(out), "--no-baselines", "--recover", "lsq+distill",
                 "--recover-minutes", "0.05"])
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
    assert set(result.run_seconds) == {"preparation", "search", "delivery"} and min(result.run_seconds.values()) > 0
    page = (out / "report.html").read_text()
    assert "The run took" in page and all(f"<td style=\"text-align:left\">{name}</td>" in page
                                          for name in ("state.json", "model/onnx/model.onnx", "model/model.safetensors"))
    assert not list(out.glob(".staging-*"))
    *summary, done = capsys.readouterr().out.splitlines()  # the last line is key=value for scripts
    assert any("dense int8" in line for line in summary) and max(len(line) for line in summary) <= 80
    assert any("distillation:" in line for line in summary)
    assert done.startswith("done searcher=ppo delivered=ppo runtime=openvino ")
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()


def test_resume_after_interruption_gives_the_same_plan(setup, tmp_path, monkeypatch):
    model_dir, text = setup
    plain = settings(model_dir, text)

    def skip_delivery(prepared, settings, target, finals, results, out, log, floor=None, judged=None):
        plan = prepared.evaluator.plan(finals[settings.searcher]).to_dict()
        return SimpleNamespace(plan=plan, to_json=lambda: "{}")

    monkeypatch.setattr(job_module, "deliver", skip_delivery)
    monkeypatch.setattr("ppocompress.search.report.write_report", lambda out: None)
    uninterrupted = run_compress(plain, tmp_path / "a", log=lambda _: None)

    calls = {"n": 0}
    original = PlanEvaluator.quality

    def dies_midway(self, levels, fidelity="low"):
        calls["n"] += 1
        if calls["n"] == 3 * 33 + 12:  # after the sensitivities and part of the search
            raise KeyboardInterrupt
        return original(self, levels, fidelity)

    monkeypatch.setattr(PlanEvaluator, "quality", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run_compress(plain, tmp_path / "b", log=lambda _: None)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert 0 < len(state["evaluations"]) < 24 and not state["finished"]
    monkeypatch.setattr(PlanEvaluator, "quality", original)
    resumed = run_compress(plain, tmp_path / "b", resume=True, log=lambda _: None)
    assert resumed[0].plan == uninterrupted[0].plan


def test_a_floor_run_interrupted_in_delivery_resumes_to_the_same_choice(setup, tmp_path, monkeypatch):
    """The search is resumed from the state, the floor's probes are made again, and the
    same target and plans are delivered as by a run never interrupted."""
    model_dir, text = setup
    floor = settings(model_dir, text, target_speedup=None, target_set_speedups=[1.2, 1.5], min_quality=0.01, evals=6,
                     baselines=True)
    chosen = []

    def record(prepared, settings, target, finals, results, out, log, floor=None, judged=None):
        chosen.append((target.label, finals, floor))
        return SimpleNamespace(to_json=lambda: "{}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ppocompress.search.report.write_report", lambda out: None)
    monkeypatch.setattr(job_module, "deliver", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_compress(floor, tmp_path / "b", log=lambda _: None)
    finished = json.loads((tmp_path / "b" / "state.json").read_text())["finished"]
    assert {key.split()[0] for key in finished} == set(SEARCHERS)  # "ppo", "uniform 1.2x", ...: every search done
    assert not list((tmp_path / "b").glob(".*staging*"))
    monkeypatch.setattr(job_module, "deliver", record)
    lines = []
    run_compress(floor, tmp_path / "b", resume=True, log=lines.append)
    assert not any(line.startswith("search:") for line in lines)  # nothing searched again
    run_compress(floor, tmp_path / "a", log=lambda _: None)
    assert chosen[0] == chosen[1] and chosen[0][0] == "1.5x" and set(chosen[0][1]) == set(SEARCHERS)


def test_resume_refuses_other_settings_and_missing_state(setup, tmp_path, capsys):
    model_dir, text = setup
    assert main(["compress", "--model", str(model_dir), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["compress", "--target-speedup", "2", "--target-size", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_a_target_set_is_one_ppo_run_and_per_target_baselines_on_as_many_evaluations(setup, tmp_path, monkeypatch):
    model_dir, text = setup
    delivered = {}

    def keep_finals(prepared, settings, target, finals, results, out, log, floor=None, judged=None):
        delivered[target.label] = (out, {name: prepared.cost.speedup(plan) for name, plan in finals.items()},
                                   {name: r.evaluations for name, r in results.items()})
        return SimpleNamespace(to_json=lambda: "{}")

    monkeypatch.setattr(job_module, "deliver", keep_finals)
    monkeypatch.setattr("ppocompress.search.report.write_report", lambda out: None)
    monkeypatch.setattr("ppocompress.search.report.write_target_set_report", lambda out: None)
    target_set = settings(model_dir, text, target_speedup=None, target_set_speedups=[1.5, 1.2], evals=24, baselines=True)
    run_compress(target_set, tmp_path / "family", log=lambda _: None)
    assert list(delivered) == ["1.2x", "1.5x"]
    for label, (out, speedups, evaluations) in delivered.items():
        assert out == tmp_path / "family" / f"target-{label}"
        assert all(speedup >= float(label[:-1]) - 1e-9 for speedup in speedups.values())
        assert evaluations["ppo"] <= 24 and all(evaluations[name] <= 12 for name in ("uniform", "random", "evolutionary"))
    state = json.loads((tmp_path / "family" / "state.json").read_text())
    assert set(state["finished"]) == {"ppo", *(f"{name} {label}" for name in ("uniform", "random", "evolutionary", "estimate")
                                               for label in ("1.2x", "1.5x"))}
    saved = json.loads((tmp_path / "family" / "family.json").read_text())
    assert saved["folders"] == ["target-1.2x", "target-1.5x"] and saved["policy"] == "policy"
    assert saved["evaluations"]["ppo"] <= 24 and saved["evaluations"]["evolutionary"] <= 24
    assert (tmp_path / "family" / "policy" / "menu.json").exists()
    assert (tmp_path / "family" / "policy" / "model.safetensors").exists()

    # A new target from the policy: the target set's scored plans come along at no cost.
    scored = json.loads((tmp_path / "family" / "policy" / "plans.json").read_text())["rewards"]
    logged: list[str] = []
    results = {}
    monkeypatch.setattr(job_module, "deliver", lambda prepared, settings, target, finals, found, out, log, **_: (
        results.update(found), SimpleNamespace(to_json=lambda: "{}"))[1])
    run_compress(settings(model_dir, text, target_speedup=1.4, evals=1, policy=str(tmp_path / "family" / "policy")),
                 tmp_path / "new-target", log=logged.append)
    assert f"reusing the {len(scored)} plans the policy's run scored" in logged
    assert results["ppo"].evaluations == 1 and len(results["ppo"].evaluated) > 1


@pytest.mark.parametrize("arguments, message", [
    (["--targets", "2,x"], "takes numbers"),
    (["--targets", "2,3", "--target-speedup", "3"], "exactly one of"),
    (["--targets", "0.5,2"], "must be >= 1"),
    (["--target-int8-speedups", "1.2,0.9"], "--target-int8-speedup must be >= 1"),
    (["--target-int8-speedups", "1.2", "--targets", "3"], "exactly one of"),
    (["--policy", "no/such/folder"], "is not a folder"),
    (["--policy", ".", "--searcher", "evolutionary"], "starts the ppo searcher"),
])
def test_target_set_and_policy_options_fail_in_one_line(arguments, message, tmp_path, capsys):
    assert main(["compress", *arguments, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # two deliveries: exports, latency subprocesses
def test_a_target_set_run_delivers_a_model_per_target_and_its_policy_starts_a_new_run(setup, tmp_path, capsys,
                                                                                      monkeypatch):
    model_dir, text = setup
    out = tmp_path / "family"
    judges, real_held_out = [], prepare_module.HeldOut
    monkeypatch.setattr(prepare_module, "HeldOut", lambda *args: judges.append(args) or real_held_out(*args))
    common = ["--model", str(model_dir), "--cost", "flops", "--text", str(text), "--runtime", "onnxruntime"]
    assert main(["compress", *common, "--targets", "1.5,1.2", "--evals", "16", "--out", str(out)]) == 0
    target_set = TargetSetResult.from_dir(out)
    assert [m.target_value for m in target_set.members] == [1.2, 1.5] and target_set.folders == ["target-1.2x", "target-1.5x"]
    for folder, member in zip(target_set.folders, target_set.members):
        assert set(member.searchers) == set(SEARCHERS)
        assert (out / folder / "model").is_dir() and (out / folder / "report.html").exists()
    assert target_set.evaluations["ppo"] <= 16 and target_set.evaluations["evolutionary"] <= 16
    assert len(judges) == 1  # both targets judged by one HeldOut: the dense outputs computed once
    for name in ("report.html", "family_pareto.png", "family_plans.png"):
        assert (out / name).exists()
    *summary, _, done = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in summary) <= 80 and "target=1.5" in done
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()
    zero_shot = tmp_path / "zero-shot"
    assert main(["compress", *common, "--target-speedup", "1.4", "--policy", str(out / "policy"), "--evals", "1",
                 "--no-baselines", "--out", str(zero_shot)]) == 0
    assert CompressResult.from_file(zero_shot / "result.json").delivered.evaluations == 1


def test_a_policy_for_another_menu_is_refused_before_the_first_long_step(setup, tmp_path):
    model_dir, text = setup
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "menu.json").write_text(json.dumps({"levels": ["h100-f100", "drop"]}))
    logged: list[str] = []
    with pytest.raises(UserError, match="a policy acts only on the menu it was trained on"):
        run_compress(settings(model_dir, text, policy=str(policy)), tmp_path / "out", log=logged.append)
    assert not any("importance" in line for line in logged) and not (tmp_path / "out").exists()


def test_a_damaged_policy_is_refused_before_the_first_long_step(setup, tmp_path):
    model_dir, text = setup
    policy = tmp_path / "policy"
    policy.mkdir()
    menu = default_menu(groups=layer_table(load_model(str(model_dir)).model)[0].kv_heads)
    (policy / "menu.json").write_text(json.dumps({"levels": [level.name for level in menu]}))
    (policy / "config.json").write_text(json.dumps({"format": PPO_SAVE_FORMAT}))  # the rest lost
    logged: list[str] = []
    with pytest.raises(UserError, match="is damaged"):
        run_compress(settings(model_dir, text, policy=str(policy)), tmp_path / "out", log=logged.append)
    assert not any("importance" in line for line in logged) and not (tmp_path / "out").exists()


def test_searchers_that_found_the_same_plan_share_one_recovered_model_and_its_measurements(setup, tmp_path, monkeypatch):
    model_dir, text = setup
    real_finalists = job_module.finalists

    def all_ppo_s(prepared, targets, results, labels, log, searchers=None):
        finals = real_finalists(prepared, targets, results, labels, log, searchers)
        finals.plans = {label: dict.fromkeys(plans, plans["ppo"]) for label, plans in finals.plans.items()}
        return finals

    monkeypatch.setattr(job_module, "finalists", all_ppo_s)
    lines = []
    result, = run_compress(settings(model_dir, text, evals=6, baselines=True), tmp_path / "run", log=lines.append)
    assert sum("recovery lsq, export" in line for line in lines) == 1
    assert {f"{name}: the same plan as ppo" for name in ("uniform", "random", "evolutionary", "estimate")} <= set(lines)
    ppo = result.searchers["ppo"]
    for name, model in result.searchers.items():
        assert model.latency == ppo.latency and model.cosine_heldout == ppo.cosine_heldout and model.plan == ppo.plan, name


def test_each_member_of_a_target_set_has_a_folder_of_its_own_named_by_its_target():
    from ppocompress.search.env import Target
    from ppocompress.search.job import member_folder

    assert [member_folder(Target(kind, value)) for kind, value in
            (("speedup", 4.0), ("int8-speedup", 1.2), ("size", 0.5))] == ["target-4x", "target-1.2x-int8", "target-size-0.5"]


def test_a_quality_floor_delivers_the_most_compressed_target_that_keeps_it(setup, tmp_path, capsys):
    """Probed from the most compressed down: a floor every plan keeps costs one probe, and
    one model is delivered into --out (no member folders). The other searchers' plans are
    chosen for the delivered target alone."""
    model_dir, text = setup
    out = tmp_path / "run"
    lines = []
    result, = run_compress(settings(model_dir, text, target_speedup=None, target_set_speedups=[1.2, 1.5], min_quality=0.01,
                                    evals=6, baselines=True), out, log=lines.append)
    assert result.floor.chosen == "1.5x" and [probe.target for probe in result.floor.probes] == ["1.5x"]
    rescored = [line.split(" best plans")[0] for line in lines if "re-scoring" in line]
    others = ", ".join(name for name in result.searchers if name != "ppo")
    assert rescored == ["1.2x: re-scoring ppo's", "1.5x: re-scoring ppo's", f"1.5x: re-scoring {others}'s"]
    assert list(result.searchers) == list(SEARCHERS) and not result.floor.skipped
    assert result.target_value == 1.5 and result.delivered is result.searchers["ppo"]
    assert "ppo: the model the floor judged, as exported for onnxruntime" in lines  # delivered as judged, not recovered again
    assert not any(line.startswith("ppo: recovery") for line in lines)
    assert not any("validation text" in warning for warning in result.warnings)  # (timings may be flagged: a busy machine)
    assert 0 < result.floor.probes[0].quality <= 1.0 + 1e-6 and "floor" in result.run_seconds
    assert CompressResult.from_file(out / "result.json").floor == result.floor
    assert (out / "model").is_dir() and not list(out.glob("target-*")) and not (out / "family.json").exists()
    assert not list(out.glob(".*staging*")) and not (out / ".recovery").exists()
    assert ("floor cosine 0.01 on validation text: 1.5x delivered, recovered by lsq (probed lsq: 1.5x "
            in (out / "report.html").read_text())
    print_compress(result)
    summary = capsys.readouterr().out.splitlines()
    assert any(line.startswith("floor cosine 0.01 on validation text: 1.5x delivered, recovered by lsq")
               for line in summary)
    assert max(len(line) for line in summary) <= 80 and any("ppo *" in line for line in summary)


def test_a_quality_floor_no_plan_keeps_delivers_dense_int8_and_says_so(setup, tmp_path):
    """Least squares short on every target, the floor distills from the least compressed
    up, and stops at the first distillation short of it too."""
    model_dir, text = setup
    out = tmp_path / "run"
    lines = []
    result, = run_compress(settings(model_dir, text, target_speedup=None, target_set_speedups=[1.2, 1.5], min_quality=1.0,
                                    evals=6, recover_minutes=0.02), out, log=lines.append)
    assert result.floor.chosen is None
    made = [(probe.target, probe.recovery) for probe in result.floor.probes]
    probed = [label for label, recovery in made if recovery == "lsq"]
    assert made == [(label, "lsq") for label in probed] + [("1.2x", "lsq+distill")]  # then stopped
    assert sorted([*probed, *result.floor.skipped]) == ["1.2x", "1.5x"]  # each lsq target probed or skipped by its score
    assert all(score < 1.0 - SKIP_MARGIN for score in result.floor.skipped.values())
    assert "1.2x" in probed and "ppo: the model the floor judged, as exported for onnxruntime" in lines  # not made again
    assert result.delivered is result.dense_int8 and result.target_value == 1.2  # the searchers' plans measured beside it
    assert result.warnings[0].startswith("no target's plan keeps cosine 1 on validation text")
    assert "the dense int8 model is delivered" in result.warnings[0] and "ask for a lower floor" in result.warnings[0]
    assert "Delivered: the dense int8 model" in (out / "report.html").read_text()
    delivered = ppocompress.load(out / "model")
    assert len(delivered.plan.layers_in(Precision.INT8)) == len(delivered.plan.kept_layers()) == len(delivered.plan.layers)


def test_a_floor_alone_searches_the_floor_targets_and_a_floor_outside_0_1_is_refused(tmp_path, capsys):
    from ppocompress.search.settings import FLOOR_INT8_SPEEDUPS

    floor = CompressSettings(min_quality=0.9)
    assert floor.target_set_int8_speedups == list(FLOOR_INT8_SPEEDUPS) and floor.target_speedup is None
    assert CompressSettings(min_quality=0.98, target_speedup=3.0).targets() == [Target("speedup", 3.0)]  # a target given
    assert CompressSettings(target_speedup=3.0).min_quality is None  # a target alone: no floor
    for value in ("0", "1.5", "nan"):
        assert main(["compress", "--min-quality", value, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert "--min-quality must be a number in (0, 1]" in err and len(err.strip().splitlines()) == 1
