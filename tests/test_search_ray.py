"""Plans scored on Ray workers score as they do here, in the order asked, so a run with
the same seed makes the same plans with or without --ray, on a local cluster or two nodes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compress_models import PASSAGES
from ppocompress.cli import main
from ppocompress.cluster import connect
from ppocompress.compress import layer_table, load_model
from ppocompress.compress.ops.importance import importance_scores
from ppocompress.errors import UserError
from ppocompress.search.levels import default_menu
from ppocompress.search.plan import Plan
from ppocompress.search.results import CompressResult
from ppocompress.search.scoring import EvaluatorSpec, RayScorer
from ray_cluster import two_node_cluster

PLANS = [Plan.of(levels) for levels in ([1, 2, 0], [0, 0, 0], [5, 9, 3], [1, 2, 0], [32, 0, 7], [3, 3, 3])]  # a repeat among them


@pytest.fixture(scope="module")
def spec(job_inputs) -> EvaluatorSpec:
    model, _ = job_inputs
    dense = load_model(str(model))
    menu = default_menu(groups=layer_table(dense.model)[0].kv_heads)
    return EvaluatorSpec(str(model), False, menu, importance_scores(dense, PASSAGES[:16]), PASSAGES[:64], recovery="lsq",
                         recovery_texts=PASSAGES[64:], runtime="onnxruntime")


def test_ray_workers_score_plans_as_this_process_does_in_the_order_asked(spec):
    here = spec.build()
    expected = list(here.qualities(PLANS, "low"))
    with connect("local", num_cpus=2) as cpus:
        scorer = RayScorer(spec, cpus, here.identity)
        assert list(scorer.qualities(PLANS, "low")) == expected
        assert list(scorer.qualities(PLANS[:2], "probe")) == list(here.qualities(PLANS[:2], "probe"))


def test_a_worker_whose_evaluator_differs_is_refused(spec):
    other = EvaluatorSpec(**{**spec.__dict__, "calibration": list(reversed(spec.calibration))})
    with connect("local", num_cpus=1) as cpus, pytest.raises(UserError, match="scores plans differently"):
        RayScorer(other, cpus, spec.build().identity)


def test_without_ray_compress_ray_says_how_to_install_it_before_loading_anything(without_ray, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compress", "--ray", "local", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: Ray is not installed; pip install 'ppocompress[ray]', or run without Ray"
    assert not out.exists()


def test_a_ray_address_that_is_not_host_and_port_fails_in_one_line(tmp_path, capsys):
    assert main(["compress", "--ray", "nowhere", "--out", str(tmp_path / "out")]) == 2
    assert "is not host:port or auto" in capsys.readouterr().err


@pytest.mark.slow  # two Ray nodes, two compress runs with latency and ONNX export
def test_a_compress_run_on_two_ray_nodes_delivers_the_plan_of_a_local_run(job_inputs, tmp_path):
    model, text = job_inputs
    args = ["compress", "--model", str(model), "--text", str(text), "--cost", "flops", "--runtime", "onnxruntime",
            "--target-speedup", "1.5", "--evals", "12", "--no-baselines", "--recover", "lsq"]
    def compress(out: str, *more: str, env=None) -> subprocess.CompletedProcess:
        """In a process of its own, as a user runs it: what earlier tests left in this one
        (torch settings, patches) cannot move the scores of a tiny model's near-1 cosines."""
        return subprocess.run([sys.executable, "-m", "ppocompress.cli", *args, "--out", str(tmp_path / out), *more], env=env,
                              capture_output=True, text=True, timeout=900)

    local = compress("local")
    assert local.returncode == 0, local.stderr
    with two_node_cluster() as (address, env):
        run = compress("ray", "--ray", address, env=env)
        assert run.returncode == 0, run.stderr
        assert "plan evaluations on 2 Ray workers" in run.stderr
    local, ray = (json.loads((tmp_path / name / "state.json").read_text()) for name in ("local", "ray"))
    assert ray["evaluations"] == local["evaluations"]
    assert ray["measurements"]["sensitivity"] == local["measurements"]["sensitivity"]
    delivered = [CompressResult.from_file(tmp_path / name / "result.json").delivered.levels for name in ("local", "ray")]
    assert delivered[0] == delivered[1]
