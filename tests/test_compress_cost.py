"""Parameter, byte and FLOP counts, and subprocess latency measurement."""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch
from compress_models import save_tiny_model
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from ppocompress.compress import cost
from ppocompress.compress.apply import apply_plan
from ppocompress.compress.cost import (
    LatencyResult,
    count_parameters,
    directory_bytes,
    measure_latencies,
    measure_latency,
    model_bytes,
    model_flops,
)
from ppocompress.compress.export import save
from ppocompress.compress.models import load_model
from ppocompress.compress.onnx_export import export_onnx
from ppocompress.compress.plan import CompressionPlan, LayerPlan
from ppocompress.errors import UserError


def _tiny_bert(hidden: int = 8, heads: int = 2, ffn: int = 16, layers: int = 2, vocab: int = 50) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn,
                        num_hidden_layers=layers, max_position_embeddings=32)  # fmt: skip
    return BertModel(config).eval()


def _int8(model: nn.Module) -> nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def test_count_parameters_equals_numel_and_survives_int8_while_bytes_drop_4x_for_linear_weights():
    model = _tiny_bert(hidden=64, heads=4, ffn=256)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    linear_weight_bytes = sum(m.weight.numel() * 4 for m in linears)
    other_bytes = model_bytes(model) - linear_weight_bytes  # embeddings, norms, biases: stay fp32
    quantized = _int8(model)
    assert sum(1 for m in quantized.modules() if isinstance(m, nn.Linear)) == 0  # really swapped
    assert count_parameters(quantized) == count_parameters(model)
    int8_linear_bytes = model_bytes(quantized) - other_bytes
    assert 3.5 < linear_weight_bytes / int8_linear_bytes <= 4.0


def test_count_parameters_counts_tied_weights_once():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=8, n_layer=1, n_head=2, n_positions=16))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert count_parameters(model) == sum(p.numel() for p in model.transformer.parameters())


def test_model_flops_matches_a_hand_count_for_a_tiny_encoder_and_a_causal_lm():
    h, f, s, v = 8, 16, 4, 50
    per_token_per_layer = 2 * (4 * h * h + 2 * h * f) + 2 * 2 * s * h  # q k v o + FFN; scores and weighted sum
    assert model_flops(_tiny_bert(hidden=h, ffn=f, layers=2, vocab=v), s) == 2 * per_token_per_layer * s
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=h, n_layer=2, n_head=2, n_inner=f, n_positions=16))
    gpt2_layer = 2 * (3 * h * h + h * h + 2 * h * f) + 2 * 2 * s * h  # fused q|k|v, proj, FFN
    lm_head = 2 * v * h
    assert model_flops(gpt2, s) == (2 * gpt2_layer + lm_head) * s


def test_directory_bytes_sums_files_or_sizes_one_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "b.bin").write_bytes(b"x" * 5)
    assert directory_bytes(tmp_path) == 15
    assert directory_bytes(tmp_path / "a.bin") == 10
    with pytest.raises(UserError, match="does not exist"):
        directory_bytes(tmp_path / "missing")


@pytest.fixture(scope="module")
def tiny_targets(tmp_path_factory):
    """A tiny saved BERT directory and its ONNX export."""
    directory = save_tiny_model("bert", tmp_path_factory.mktemp("bert"))
    loaded = load_model(str(directory))
    return directory, export_onnx(loaded.model, loaded.tokenizer, directory.parent / "bert.onnx")


def test_measure_latency_returns_positive_medians_for_torch_and_onnxruntime(tiny_targets):
    directory, onnx_path = tiny_targets
    for target, backend in ((directory, "torch"), (onnx_path, "onnxruntime")):
        result = measure_latency(target, backend, batch_size=4, seq_len=16, warmup=1, repeats=3)
        assert result.backend == backend and result.repeats == 3
        assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms
        assert (result.batch_size, result.seq_len, result.threads) == (4, 16, 2)


def test_measure_latency_times_a_compressed_directory_with_compression_json(tmp_path, tiny_targets):
    directory, _ = tiny_targets
    plan = CompressionPlan([LayerPlan(int8=True), LayerPlan(keep_groups=[0, 1]), LayerPlan(drop=True)])
    compressed = save(apply_plan(load_model(str(directory)), plan), tmp_path / "compressed")
    assert (compressed / "compression.json").is_file()
    result = measure_latency(compressed, "torch", batch_size=4, seq_len=16, warmup=1, repeats=2)
    assert result.median_ms > 0


def test_bad_latency_targets_raise_user_error(tmp_path, tiny_targets):
    directory, onnx_path = tiny_targets
    with pytest.raises(UserError, match="is not a model directory"):
        measure_latency(tmp_path / "missing", "torch")
    with pytest.raises(UserError, match="is not a model directory"):
        measure_latency(onnx_path, "torch")
    with pytest.raises(UserError, match="is not an .onnx file"):
        measure_latency(directory, "onnxruntime")
    with pytest.raises(UserError, match="unknown backend"):
        measure_latency(directory, "tensorflow")


def test_a_worker_user_error_comes_back_as_user_error_with_its_message(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        measure_latency(tmp_path / "empty", "torch", repeats=1, warmup=0)
    ids = onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "seq"])
    out = onnx.helper.make_tensor_value_info("out", onnx.TensorProto.INT64, ["batch", "seq"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["input_ids"], ["out"])], "foreign", [ids], [out])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(UserError, match="has no vocab_size metadata"):
        measure_latency(tmp_path / "foreign.onnx", "onnxruntime", repeats=1, warmup=0)


def test_a_worker_crash_raises_runtime_error_with_its_last_stderr_line(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not protobuf")
    with pytest.raises(RuntimeError, match=r"latency worker for .*broken.onnx \(onnxruntime\) failed: .+"):
        measure_latency(broken, "onnxruntime", repeats=1, warmup=0)


def test_measure_latencies_interleaves_rounds_and_pools_their_timings(monkeypatch, tiny_targets):
    directory, onnx_path = tiny_targets
    calls = []

    def fake_worker(path, backend, *args):
        calls.append(backend)
        return [10.0 * len(calls)] * 2  # 2 timings per round

    monkeypatch.setattr(cost, "_run_worker", fake_worker)
    results = measure_latencies([("a", directory, "torch"), ("b", onnx_path, "onnxruntime")], rounds=3)
    assert calls == ["torch", "onnxruntime"] * 3
    assert isinstance(results["a"], LatencyResult) and results["a"].repeats == 6
    assert results["a"].median_ms == 30.0 and results["b"].median_ms == 40.0  # medians over rounds 1, 3, 5 / 2, 4, 6


def test_measure_latencies_rejects_duplicate_labels(tiny_targets):
    directory, _ = tiny_targets
    with pytest.raises(UserError, match="unique"):
        measure_latencies([("a", directory, "torch"), ("a", directory, "torch")])
