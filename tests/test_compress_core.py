"""Physical pruning for every family: sliced == zeroed, plans, save/load, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers.pytorch_utils import Conv1D

import ppocompress
from compress_models import FAMILIES, outputs, sample_batch, save_tiny_model
from ppocompress.compress import (
    CompressionPlan,
    LayerPlan,
    adapter_for,
    apply_plan,
    layer_table,
    load_model,
    save,
)
from ppocompress.compress.models.loading import resolve_source
from ppocompress.compress.ops.quantize import WeightInt8Linear, is_int8_linear
from ppocompress.compress.plan import Precision
from ppocompress.errors import UserError


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory):
    directory = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    return load_model(str(directory))


def mixed_plan(table) -> CompressionPlan:
    """Different head and FFN counts in every layer, including keeping all of them."""
    layers = []
    for info in table:
        keep_groups = list(range(0, info.kv_heads, 1 + info.index % 2))[: max(1, info.kv_heads - info.index)]
        keep_neurons = [n for n in range(info.ffn) if (n + info.index) % 3 != 0]
        layers.append(LayerPlan(keep_groups=keep_groups if info.index else None, keep_neurons=keep_neurons))
    return CompressionPlan(layers)


def zeroed_copy(model, plan: CompressionPlan):
    """The dense model with removed heads/neurons silenced at the output projections."""
    dense = copy.deepcopy(model)
    adapter = adapter_for(dense)
    head_dim = adapter.head_dim(dense)
    for layer, lp in zip(adapter.layers(dense), plan.layers):
        if lp.keep_groups is not None:
            width = adapter.query_heads(layer, head_dim) // adapter.kv_heads(layer, head_dim) * head_dim
            removed = [g for g in range(adapter.kv_heads(layer, head_dim)) if g not in lp.keep_groups]
            _zero_inputs(adapter.attention_output(layer), [g * width + i for g in removed for i in range(width)])
        if lp.keep_neurons is not None:
            removed = [n for n in range(adapter.ffn_width(layer)) if n not in lp.keep_neurons]
            _zero_inputs(adapter.ffn_output(layer), removed)
    return dense


def _zero_inputs(module, index):
    with torch.no_grad():
        if isinstance(module, Conv1D):  # weight [in, out]
            module.weight[index, :] = 0.0
        else:  # nn.Linear weight [out, in]
            module.weight[:, index] = 0.0


def test_sliced_model_equals_zeroed_dense_model(tiny):
    plan = mixed_plan(layer_table(tiny.model))
    compressed = apply_plan(tiny, plan)
    batch = sample_batch(tiny.tokenizer)
    expected = outputs(zeroed_copy(tiny.model, plan), batch)
    got = outputs(compressed.model, batch)
    mask = batch["attention_mask"].bool()
    assert (got[mask] - expected[mask]).abs().max().item() <= 1e-4


def test_slicing_is_physical_and_per_layer(tiny):
    table = layer_table(tiny.model)
    plan = mixed_plan(table)
    compressed = apply_plan(tiny, plan)
    new_table = layer_table(compressed.model)
    for before, after, lp in zip(table, new_table, plan.layers):
        expected_groups = before.kv_heads if lp.keep_groups is None else len(lp.keep_groups)
        assert after.kv_heads == expected_groups
        assert after.heads == expected_groups * (before.heads // before.kv_heads)  # GQA mapping intact
        assert after.ffn == len(lp.keep_neurons)
        assert after.params < before.params
    assert sum(p.numel() for p in compressed.model.parameters()) < sum(p.numel() for p in tiny.model.parameters())
    assert len({info.ffn for info in new_table}) > 1 or len({info.heads for info in new_table}) > 1


def test_dropping_layers_removes_them(tiny):
    table = layer_table(tiny.model)
    plan = CompressionPlan.dense(len(table))
    plan.layers[1].drop = True
    compressed = apply_plan(tiny, plan)
    assert len(layer_table(compressed.model)) == len(table) - 1
    assert compressed.model.config.num_hidden_layers == len(table) - 1
    out = outputs(compressed.model, sample_batch(tiny.tokenizer))
    assert torch.isfinite(out).all()


def test_save_and_load_give_identical_outputs(tiny, tmp_path):
    table = layer_table(tiny.model)
    plan = mixed_plan(table)
    plan.layers[0].weights = Precision.INT8
    plan.layers[-1].sparsity = 0.5
    plan.layers[1].drop = True
    compressed = apply_plan(tiny, plan)
    save(compressed, tmp_path / "saved")
    reloaded = ppocompress.load(tmp_path / "saved")
    batch = sample_batch(tiny.tokenizer)
    assert torch.equal(outputs(compressed.model, batch), outputs(reloaded.model, batch))
    assert reloaded.plan == plan


def test_gqa_pruning_keeps_the_query_to_kv_mapping(tmp_path):
    tiny = load_model(str(save_tiny_model("llama", tmp_path / "llama")))
    plan = CompressionPlan([LayerPlan(keep_groups=[1, 3]), LayerPlan(keep_groups=[0]), LayerPlan()])
    compressed = apply_plan(tiny, plan)
    for layer, kept in zip(compressed.model.model.layers, (2, 1, 4)):
        attn = layer.self_attn
        assert attn.k_proj.out_features == attn.v_proj.out_features == kept * 4
        assert attn.q_proj.out_features == kept * 2 * 4  # two query heads per KV group
        assert attn.num_key_value_groups == 2
    with torch.no_grad():  # incremental decoding with the KV cache still works
        ids = tiny.tokenizer(["the cat sat"], return_tensors="pt")["input_ids"]
        generated = compressed.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 3


def test_int8_is_per_channel_and_smaller(tiny, tmp_path):
    table = layer_table(tiny.model)
    plan = CompressionPlan([LayerPlan(weights=Precision.INT8) for _ in table])
    compressed = apply_plan(tiny, plan)
    quantized = [m for m in compressed.model.modules() if is_int8_linear(m)]
    adapter = adapter_for(compressed.model)
    per_layer = [len(adapter.attention_modules(layer) + adapter.ffn_modules(layer)) for layer in adapter.layers(compressed.model)]
    assert len(quantized) == sum(per_layer)  # every projection of every layer, nothing else
    if tiny.is_causal:  # int8 weights only, a scale per output row
        assert all(isinstance(m, WeightInt8Linear) and m.weight_scale.shape == (m.out_features,) for m in quantized)
    else:
        assert all(m.weight().qscheme() == torch.per_channel_affine for m in quantized)
    save(compressed, tmp_path / "int8")
    save(tiny, tmp_path / "dense")
    assert (tmp_path / "int8" / "model.safetensors").stat().st_size < (tmp_path / "dense" / "model.safetensors").stat().st_size


def test_plan_json_round_trip(tmp_path):
    plan = CompressionPlan([LayerPlan(keep_groups=[0, 2], keep_neurons=[1, 5, 7], weights=Precision.INT8), LayerPlan(drop=True),
                            LayerPlan(sparsity=0.25)])
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    assert CompressionPlan.from_json_file(path) == plan
    path.write_text(json.dumps({"plan": plan.to_dict(), "other": 1}))  # a result.json holds a plan too
    assert CompressionPlan.from_json_file(path) == plan


@pytest.mark.parametrize(
    "layers, message",
    [
        ([LayerPlan()] * 2, "the plan has 2 layers but the model has 3"),
        ([LayerPlan(drop=True)] * 3, "drops every layer"),
        ([LayerPlan(keep_groups=[])] + [LayerPlan()] * 2, "keep_groups is empty"),
        ([LayerPlan(keep_neurons=[0, 0])] + [LayerPlan()] * 2, "must be distinct indices"),
        ([LayerPlan(keep_groups=[99])] + [LayerPlan()] * 2, "must be distinct indices in [0, 4)"),
        ([LayerPlan(sparsity=1.5)] + [LayerPlan()] * 2, "sparsity must be in [0, 1)"),
    ],
)
def test_plans_that_do_not_fit_are_rejected(tmp_path, layers, message):
    tiny = load_model(str(save_tiny_model("bert", tmp_path / "bert")))
    with pytest.raises(UserError, match=None) as info:
        apply_plan(tiny, CompressionPlan(list(layers)))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_mistyped_relative_path_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    """Offline, a hub lookup takes 20 s to fail; a value that cannot be an id fails at once."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for mistyped in ("runs/ou", "my model", "models\\minilm"):
        with pytest.raises(UserError, match="does not exist"):
            resolve_source(mistyped)
    assert resolve_source("sentence-transformers/all-MiniLM-L6-v2") == ("sentence-transformers/all-MiniLM-L6-v2",) * 2
    assert resolve_source("gpt2") == ("gpt2", "gpt2")


def test_bad_model_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "missing" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    unsupported = tmp_path / "t5"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(UserError, match="supported architectures"):
        load_model(str(unsupported))


def test_pickle_weights_are_refused(tmp_path):
    directory = save_tiny_model("bert", tmp_path / "bert")
    state = load_model(str(directory)).model.state_dict()
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors"):
        load_model(str(directory))


def test_loading_a_directory_that_is_not_a_compressed_model_fails(tmp_path):
    with pytest.raises(UserError, match="no compression.json"):
        ppocompress.load(tmp_path)
