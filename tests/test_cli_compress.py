"""`ppocompress evaluate` and `bench` on tiny models; their errors are one line, exit 2."""

from __future__ import annotations

import json
import shutil

import pytest

from compress_models import SHORT_LINES
from ppocompress.cli import main
from ppocompress.compress import CompressionPlan, LayerPlan, load_model
from ppocompress.compress.commands.bench import Variant, run_bench
from ppocompress.compress.data.text import splits_from_texts
from ppocompress.compress.files.sentence_transformers_folder import (
    write_sentence_transformers_files,
)
from ppocompress.compress.measure.timing import TimingSetup
from ppocompress.compress.pipeline import compress
from ppocompress.compress.plan import Precision
from ppocompress.compress.runtimes import get_runtime


def test_evaluate_reports_quality_and_cost_of_a_plan(tiny_dir, text_file, tmp_path, capsys):
    plan = CompressionPlan([LayerPlan(keep_neurons=list(range(24)), weights=Precision.INT8), LayerPlan(drop=True),
                            LayerPlan(keep_groups=[0, 1])])
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.to_json())
    code = main(["evaluate", "--model", str(tiny_dir), "--plan", str(plan_path), "--text", str(text_file),
                 "--recover", "lsq", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    dense, compressed = report["dense"], report["compressed"]
    assert compressed["params"] < dense["params"] and compressed["size_bytes"] < dense["size_bytes"]
    assert compressed["flops_per_sequence"] < dense["flops_per_sequence"]
    assert 0 < compressed["mean_cosine"] <= 1.0 + 1e-6
    assert dense["latency_torch_fp32_ms"] > 0 and compressed["latency_ms"] > 0 and compressed["speedup"] > 0
    assert "lee_pearson" in dense and report["plan"] == plan.to_dict()


def test_evaluate_distils_a_plan_and_reports_how(tiny_dir, text_file, tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(CompressionPlan([LayerPlan(keep_neurons=list(range(16)))] * 3).to_json())
    code = main(["evaluate", "--model", str(tiny_dir), "--plan", str(plan_path), "--text", str(text_file),
                 "--recover", "lsq+distill", "--recover-minutes", "0.05", "--no-latency", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recovery"] == "lsq+distill" and report["distillation"]["steps"] >= 1
    assert report["distillation"]["stopped"] in ("budget", "no gain", "schedule")


def test_evaluate_table_output(tiny_dir, text_file, capsys):
    assert main(["evaluate", "--model", str(tiny_dir), "--text", str(text_file), "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "lee_pearson" in out and "params" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--model", "/no/such/model"], "does not exist"),
        (["evaluate", "--plan", "/no/such/plan.json"], "plan file /no/such/plan.json does not exist"),
        (["evaluate", "--text", "/no/such/text.txt"], "does not exist"),
        (["bench", "--text", "/no/such/text.txt"], "does not exist"),
        (["evaluate", "--recover", "prayer"], "unknown recovery 'prayer'"),
        (["evaluate", "--recover", "distill", "--recover-minutes", "0"], "--recover-minutes must be a positive number"),
        (["compress", "--recover", "lsq+distill", "--recover-minutes", "nan"], "--recover-minutes must be a positive number"),
    ],
)
def test_bad_inputs_are_one_line_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err


def test_plan_that_does_not_fit_the_model_is_one_line(tiny_dir, text_file, tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(CompressionPlan.dense(5).to_json())
    assert main(["evaluate", "--model", str(tiny_dir), "--plan", str(plan_path), "--text", str(text_file)]) == 2
    assert "the plan has 5 layers but the model has 3" in capsys.readouterr().err


def test_binary_text_file_is_rejected(tiny_dir, tmp_path, capsys):
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)) * 10)
    assert main(["evaluate", "--model", str(tiny_dir), "--text", str(binary)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow  # a dozen latency subprocesses
def test_run_bench_measures_each_variant_side_by_side(tiny_dir):
    dense = load_model(str(tiny_dir))
    variants = [Variant("dense"), Variant("int8", weights=Precision.INT8), Variant("ffn -50%", neuron_keep=0.5)]
    setup = TimingSetup(batch_size=4, seq_len=16, rounds=1, repeats=2, warmup=1)
    results = run_bench(dense, splits_from_texts(SHORT_LINES), ["torch", "onnxruntime"], variants, setup=setup,
                        log=lambda _: None)
    by_name = {(r.name, r.runtime): r for r in results}
    assert len(results) == 6 and all(r.latency_ms > 0 and r.speedup > 0 for r in results)
    assert by_name["dense", "torch"].cosine_heldout == pytest.approx(1.0, abs=1e-5)
    assert by_name["ffn -50%", "torch"].params < by_name["dense", "torch"].params
    for runtime in ("torch", "onnxruntime"):
        assert by_name["int8", runtime].size_bytes < by_name["dense", runtime].size_bytes
        assert by_name["int8", runtime].cosine_heldout > 0.5


@pytest.fixture(scope="module")
def delivered_dir(tiny_dir, tmp_path_factory):
    """A folder as compress delivers it: the pruned model saved for PyTorch, with its
    ONNX and OpenVINO models beside."""
    plan = CompressionPlan([LayerPlan(keep_neurons=list(range(24)), weights=Precision.INT8), LayerPlan(drop=True),
                            LayerPlan(keep_groups=[0, 1])])
    pruned = compress(load_model(str(tiny_dir)), plan, "none", SHORT_LINES, quantize=False)
    folder = get_runtime("torch").export(pruned, tmp_path_factory.mktemp("delivered"), [])
    write_sentence_transformers_files(pruned, folder, SHORT_LINES)
    return folder, plan


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_evaluate_judges_a_delivered_folder_by_the_files_it_serves(delivered_dir, tiny_dir, text_file, runtime, capsys):
    folder, plan = delivered_dir
    assert main(["evaluate", "--model", str(folder), "--dense", str(tiny_dir), "--text", str(text_file), "--runtime", runtime,
                 "--no-latency", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["delivered"] == str(folder) and report["plan"] == plan.to_dict() and report["recovery"] is None
    assert report["compressed"]["flops_per_sequence"] < report["dense"]["flops_per_sequence"]
    assert 0.5 < report["compressed"]["mean_cosine"] <= 1.0 + 1e-6
    served = {"torch": folder / "model.safetensors", "onnxruntime": folder / "onnx" / "model.onnx",
              "openvino": folder / "openvino" / "openvino_model.bin"}[runtime]
    assert report["compressed"]["size_bytes"] >= served.stat().st_size


def test_a_delivered_folder_names_its_dense_model_and_refuses_a_second_compression(delivered_dir, tiny_dir, text_file,
                                                                                   tmp_path, capsys):
    folder, plan = delivered_dir
    assert main(["evaluate", "--model", str(folder), "--text", str(text_file), "--no-latency", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(tiny_dir)  # the source compression.json names
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.to_json())
    for extra, words in ((["--plan", str(plan_path)], "already compressed"), (["--recover", "lsq"], "already compressed")):
        assert main(["evaluate", "--model", str(folder), "--text", str(text_file), *extra]) == 2
        assert words in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_dir), "--dense", str(tiny_dir), "--text", str(text_file)]) == 2
    assert "--dense is for a delivered" in capsys.readouterr().err
    without = tmp_path / "without-onnx"
    shutil.copytree(folder, without, ignore=shutil.ignore_patterns("onnx"))
    assert main(["evaluate", "--model", str(without), "--text", str(text_file), "--runtime", "onnxruntime"]) == 2
    assert "holds no model for onnxruntime" in capsys.readouterr().err


def test_a_delivered_folder_is_not_compressed_again(delivered_dir, text_file, tmp_path, capsys):
    folder, _ = delivered_dir
    assert main(["compress", "--model", str(folder), "--text", str(text_file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is a model ppocompress compressed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
