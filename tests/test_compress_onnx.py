"""ONNX export and ONNX Runtime int8 quantization, on tiny random models (the MiniLM one is slow)."""

from __future__ import annotations

import copy
import time

import numpy as np
import onnx
import pytest
import torch

from compress_models import outputs, sample_batch, save_tiny_model
from ppocompress.compress.files.onnx_export import (
    export_onnx,
    onnx_metadata,
    quantize_onnx_int8,
)
from ppocompress.compress.models.families import adapter_for
from ppocompress.compress.models.loading import load_model
from ppocompress.compress.ops.quantize import quantize_int8_, simulate_int8_
from ppocompress.compress.runtimes.onnx_runtime import onnx_outputs, onnx_session
from ppocompress.errors import UserError


def _other_batch(tokenizer) -> dict:
    """A batch of another size and length than the export's example, with padding."""
    texts = ["one", "a longer sentence with more words than the others have", "three words here"]
    return tokenizer(texts, return_tensors="pt", padding=True)


def _pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = mask[..., None].astype(np.float32)
    return (hidden * mask).sum(1) / mask.sum(1)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _int8_matmuls(path) -> list[str]:
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulInteger"]


@pytest.mark.parametrize("family", ["bert", "roberta", "mpnet", "gpt2", "llama", "qwen2", "mistral"])
def test_onnx_output_equals_torch_for_other_batch_sizes_and_padding(tiny_model, tmp_path, family):
    loaded = tiny_model(family)
    path = export_onnx(loaded.model, loaded.tokenizer, tmp_path / "model.onnx")
    for batch in (_other_batch(loaded.tokenizer), sample_batch(loaded.tokenizer)):
        got = onnx_outputs(path, batch["input_ids"], batch["attention_mask"])
        assert np.abs(got - outputs(loaded.model, batch).numpy()).max() < 1e-4


def test_exported_graph_inputs_outputs_and_metadata(tiny_model, tmp_path):
    bert, gpt2 = tiny_model("bert"), tiny_model("gpt2")
    bert_path = export_onnx(bert.model, bert.tokenizer, tmp_path / "bert.onnx")
    gpt2_path = export_onnx(gpt2.model, gpt2.tokenizer, tmp_path / "gpt2.onnx")
    bert_session, gpt2_session = onnx_session(bert_path), onnx_session(gpt2_path)
    assert [i.name for i in bert_session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in bert_session.get_outputs()] == ["last_hidden_state"]
    assert [i.name for i in gpt2_session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in gpt2_session.get_outputs()] == ["logits"]
    assert bert_session.get_inputs()[0].shape == ["batch", "seq"]
    assert onnx_metadata(bert_path) == {"model_type": "bert", "vocab_size": "30522"}
    assert onnx_metadata(gpt2_path)["model_type"] == "gpt2"


@pytest.mark.parametrize("family", ["bert", "mpnet", "gpt2", "llama"])
def test_onnx_output_equals_torch_for_a_model_pruned_differently_per_layer(tmp_path, family):
    loaded = load_model(str(save_tiny_model(family, tmp_path / "model")))
    model, adapter = loaded.model, adapter_for(loaded.model)
    layers, head_dim = adapter.layers(model), adapter.head_dim(model)
    adapter.prune_attention(layers[0], [0, 2], head_dim)
    adapter.prune_ffn(layers[0], list(range(0, 48, 3)))
    adapter.prune_ffn(layers[2], [1, 5, 7])
    table = adapter.layer_table(model)
    assert table[0].kv_heads == 2 < table[1].kv_heads
    assert [row.ffn for row in table] == [16, 48, 3]
    path = export_onnx(model, loaded.tokenizer, tmp_path / "pruned.onnx")
    batch = _other_batch(loaded.tokenizer)
    got = onnx_outputs(path, batch["input_ids"], batch["attention_mask"])
    assert np.abs(got - outputs(model, batch).numpy()).max() < 1e-4


def test_export_writes_only_the_target_file(tiny_model, tmp_path):
    loaded = tiny_model("bert")
    export_onnx(loaded.model, loaded.tokenizer, tmp_path / "out" / "model.onnx")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.onnx"]  # no temporary left behind


def test_export_leaves_the_model_in_eval_mode(tiny_model, tmp_path):
    loaded = tiny_model("bert")
    export_onnx(loaded.model, loaded.tokenizer, tmp_path / "model.onnx")
    assert not any(m.training for m in loaded.model.modules())


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_int8_onnx_file_is_smaller_and_close(tiny_model, tmp_path, family):
    loaded = tiny_model(family)
    fp32 = export_onnx(loaded.model, loaded.tokenizer, tmp_path / "fp32.onnx")
    int8 = quantize_onnx_int8(fp32, tmp_path / "int8.onnx", model_type=family)
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    batch = _other_batch(loaded.tokenizer)
    mask = batch["attention_mask"].numpy()
    ref = _pooled(onnx_outputs(fp32, batch["input_ids"], mask), mask)
    got = _pooled(onnx_outputs(int8, batch["input_ids"], mask), mask)
    assert _cosines(got, ref).min() > 0.9
    assert onnx_metadata(int8)["vocab_size"] == "30522"  # the latency worker still finds the vocabulary


def test_simulated_int8_reproduces_onnx_runtime_int8(tiny_model, tmp_path):
    """The search prices int8 with SimulatedInt8Linear: it must compute what ONNX Runtime's
    int8 graph computes, far closer than PyTorch's own int8 kernels (7-bit inputs) do."""
    loaded = tiny_model("bert")
    fp32 = export_onnx(loaded.model, loaded.tokenizer, tmp_path / "fp32.onnx")
    layers = list(range(len(adapter_for(loaded.model).layers(loaded.model))))
    int8 = quantize_onnx_int8(fp32, tmp_path / "int8.onnx", layers, "bert", embeddings=False)
    batch = _other_batch(loaded.tokenizer)
    onnx_int8 = torch.from_numpy(np.asarray(onnx_outputs(int8, batch["input_ids"], batch["attention_mask"].numpy())))
    errors = {}
    for name, convert in (("simulated", simulate_int8_), ("torch", quantize_int8_)):
        model = copy.deepcopy(loaded.model)
        for layer in adapter_for(model).layers(model):
            convert(layer)
        errors[name] = (outputs(model, batch) - onnx_int8).abs().max().item()
    assert errors["simulated"] < 1e-3 and errors["simulated"] < errors["torch"] / 10


def test_quantizing_embeddings_is_optional_and_only_changes_size(tiny_model, tmp_path):
    loaded = tiny_model("bert")
    fp32 = export_onnx(loaded.model, loaded.tokenizer, tmp_path / "fp32.onnx")
    with_tables = quantize_onnx_int8(fp32, tmp_path / "all.onnx")
    without = quantize_onnx_int8(fp32, tmp_path / "matmul.onnx", embeddings=False)
    table_bytes = 30522 * 32 * 4
    assert without.stat().st_size - with_tables.stat().st_size > 0.7 * table_bytes
    assert _int8_matmuls(with_tables) == _int8_matmuls(without)
    dequantized_tables = [n for n in onnx.load(str(without)).graph.node if n.op_type == "DequantizeLinear"]
    assert dequantized_tables == []


@pytest.mark.parametrize(
    ("family", "layers", "per_layer"),
    # q k v o + FFN: 2 (BERT, MPNet), 3 (gated); GPT-2 fuses q|k|v
    [("bert", [1], 6), ("mpnet", [0, 2], 6), ("gpt2", [0, 2], 4), ("llama", [2], 7)],
)
def test_quantizing_some_layers_quantizes_only_their_matmuls(tiny_model, tmp_path, family, layers, per_layer):
    loaded = tiny_model(family)
    fp32 = export_onnx(loaded.model, loaded.tokenizer, tmp_path / "fp32.onnx")
    part = quantize_onnx_int8(fp32, tmp_path / "part.onnx", layers, model_type=family, embeddings=False)
    names = _int8_matmuls(part)
    marker = {"bert": "/encoder/layer.{}/", "mpnet": "/encoder/layer.{}/", "gpt2": "/transformer/h.{}/",
              "llama": "/model/layers.{}/"}[family]
    assert len(names) == per_layer * len(layers)
    assert all(any(marker.format(i) in name for i in layers) for name in names)
    everything = _int8_matmuls(quantize_onnx_int8(fp32, tmp_path / "all.onnx", model_type=family))
    head = 0 if family in ("bert", "mpnet") else 1  # a causal LM's lm_head is quantized too
    assert len(everything) == per_layer * 3 + head
    batch = _other_batch(loaded.tokenizer)  # still runs, and still close to fp32
    ref = onnx_outputs(fp32, batch["input_ids"], batch["attention_mask"])
    got = onnx_outputs(part, batch["input_ids"], batch["attention_mask"])
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_quantizing_no_layers_without_embeddings_copies_the_file(tiny_model, tmp_path):
    loaded = tiny_model("bert")
    fp32 = export_onnx(loaded.model, loaded.tokenizer, tmp_path / "fp32.onnx")
    copy = quantize_onnx_int8(fp32, tmp_path / "copy.onnx", [], embeddings=False)
    assert copy.read_bytes() == fp32.read_bytes()


def test_quantizing_a_layer_the_graph_lacks_raises_user_error(tiny_model, tmp_path):
    loaded = tiny_model("bert")
    fp32 = export_onnx(loaded.model, loaded.tokenizer, tmp_path / "fp32.onnx")
    with pytest.raises(UserError, match=r"layers \[7\] are not in"):
        quantize_onnx_int8(fp32, tmp_path / "int8.onnx", [1, 7])
    with pytest.raises(UserError, match="unsupported architecture .t5."):
        quantize_onnx_int8(fp32, tmp_path / "int8.onnx", model_type="t5")
    assert not (tmp_path / "int8.onnx").exists()


def test_bad_onnx_paths_raise_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UserError, match="is not an .onnx file"):
        quantize_onnx_int8(tmp_path / "missing.onnx", tmp_path / "int8.onnx")
    with pytest.raises(UserError, match="is not an .onnx file"):
        onnx_outputs(tmp_path / "notes.txt", np.ones((1, 2)), np.ones((1, 2)))


MINILM_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Bushfires continued to burn across New South Wales on Monday.",
    "The central bank left interest rates unchanged for the third month in a row.",
    "A new species of frog was discovered in the rainforest.",
    "The team won the championship after a dramatic penalty shoot-out.",
    "Researchers trained a small transformer to compress sentence embeddings.",
    "Heavy rain is expected over the weekend, with flooding in low-lying areas.",
    "She plays the violin in the city orchestra.",
]


@pytest.mark.slow
def test_minilm_int8_onnx_stays_within_cosine_0_97_of_torch(tmp_path):
    loaded = load_model(None)
    start = time.perf_counter()
    fp32 = export_onnx(loaded.model, loaded.tokenizer, tmp_path / "minilm.onnx")
    exported = time.perf_counter()
    int8 = quantize_onnx_int8(fp32, tmp_path / "minilm_int8.onnx")
    matmul_only = quantize_onnx_int8(fp32, tmp_path / "minilm_int8_matmul.onnx", embeddings=False)
    quantized = time.perf_counter()
    batch = loaded.tokenizer(MINILM_SENTENCES, return_tensors="pt", padding=True)
    mask = batch["attention_mask"].numpy()
    with torch.no_grad():
        ref = _pooled(loaded.model(**batch).last_hidden_state.numpy(), mask)
    cosines = {path.name: _cosines(_pooled(onnx_outputs(path, batch["input_ids"], mask), mask), ref)
               for path in (fp32, int8, matmul_only)}
    sizes = {path.name: path.stat().st_size / 1e6 for path in (fp32, int8, matmul_only)}
    print(f"\nexport {exported - start:.1f} s, quantize x2 {quantized - exported:.1f} s")
    for name in sizes:
        print(f"{name:24s} {sizes[name]:6.2f} MB  mean cosine {cosines[name].mean():.5f}  min {cosines[name].min():.5f}")
    assert cosines[fp32.name].min() > 0.99999
    assert cosines[int8.name].min() >= 0.97 and cosines[matmul_only.name].min() >= 0.97
    assert sizes[int8.name] < 0.3 * sizes[fp32.name] < sizes[matmul_only.name] < 0.7 * sizes[fp32.name]
