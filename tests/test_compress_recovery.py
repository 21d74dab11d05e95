"""Importance scores, plans built from them, and recovery after pruning."""

from __future__ import annotations

import copy

import pytest
import torch

from compress_models import outputs, sample_batch, save_tiny_model
from ppocompress.compress import (
    CompressionPlan,
    LayerPlan,
    adapter_for,
    apply_plan,
    layer_table,
    load_model,
)
from ppocompress.compress.data.calibration import watch_inputs
from ppocompress.compress.measure.quality import embed, embedding_fidelity
from ppocompress.compress.ops.importance import (
    importance_scores,
    layers_to_drop,
    output_weight,
    plan_from_scores,
)
from ppocompress.compress.pipeline import compress
from ppocompress.compress.plan import Precision
from ppocompress.compress.recovery.lsq import (
    DEFAULT_RIDGE,
    RIDGES,
    _apply,
    _held_out_error,
    projection_grams,
    refit_projections,
    refit_to_subset,
)
from ppocompress.compress.recovery.method import Recovery
from ppocompress.errors import UserError

TEXTS = [f"sentence number {i} talks about {w} and other things in the world" for i, w in
         enumerate(["cats", "dogs", "markets", "rain", "music", "trains", "history", "science"] * 8)]


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama"])
def tiny(request, tmp_path_factory):
    return load_model(str(save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))))


@pytest.mark.parametrize("method", ["magnitude", "activation"])
def test_scores_have_one_entry_per_group_and_neuron(tiny, method):
    table = layer_table(tiny.model)
    scores = importance_scores(tiny, TEXTS[:16], method=method)
    assert len(scores) == len(table)
    for info, score in zip(table, scores):
        assert score.groups.shape == (info.kv_heads,) and score.neurons.shape == (info.ffn,)
        assert torch.all(score.groups >= 0) and torch.all(score.neurons >= 0)
        assert 0.0 <= score.block_influence <= 2.0


def test_activation_scores_rank_a_silenced_neuron_last(tmp_path):
    loaded = load_model(str(save_tiny_model("bert", tmp_path / "bert")))
    layer = loaded.model.encoder.layer[0]
    with torch.no_grad():
        layer.output.dense.weight[:, 5] = 0.0  # neuron 5 cannot contribute anything
    scores = importance_scores(loaded, TEXTS[:16], method="activation")
    assert scores[0].neurons.argmin().item() == 5
    assert scores[0].neurons[5].item() == 0.0


def test_plan_from_scores_keeps_the_top_fraction(tiny):
    table = layer_table(tiny.model)
    scores = importance_scores(tiny, TEXTS[:16])
    plan = plan_from_scores(table, scores, [0.5] * len(table), [0.25] * len(table), weights=[Precision.INT8] * len(table))
    for info, score, lp in zip(table, scores, plan.layers):
        assert len(lp.keep_groups) == max(1, round(info.kv_heads / 2))
        expected = sorted(torch.topk(score.neurons, len(lp.keep_neurons)).indices.tolist())
        assert lp.keep_neurons == expected and lp.weights == Precision.INT8
    plan.validate(table, causal=tiny.is_causal)


def test_layers_to_drop_picks_least_influence(tiny):
    scores = importance_scores(tiny, TEXTS[:16])
    drop = layers_to_drop(scores, 1)
    assert drop == [min(range(len(scores)), key=lambda i: scores[i].block_influence)]


def test_lsq_refit_brings_pruned_outputs_closer_to_dense(tiny):
    table = layer_table(tiny.model)
    scores = importance_scores(tiny, TEXTS)
    plan = plan_from_scores(table, scores, [0.5] * len(table), [0.5] * len(table))
    batch = sample_batch(tiny.tokenizer)
    reference = outputs(tiny.model, batch)
    errors = {}
    for recovery in ("none", "lsq"):
        compressed = compress(tiny, plan, recovery, TEXTS)
        errors[recovery] = (outputs(compressed.model, batch) - reference).pow(2).mean().item()
    assert errors["lsq"] < errors["none"]


def _lossless_cut(tmp_path):
    """A tiny BERT whose FFN neuron 0 of layer 1 contributes nothing, and the plan removing it."""
    loaded = load_model(str(save_tiny_model("bert", tmp_path / "bert")))
    with torch.no_grad():
        loaded.model.encoder.layer[1].output.dense.weight[:, 0] = 0.0
    table = layer_table(loaded.model)
    return loaded, CompressionPlan([LayerPlan(), LayerPlan(keep_neurons=list(range(1, table[1].ffn))), LayerPlan()])


def test_lsq_is_exact_when_nothing_was_lost(tmp_path):
    """Removing a neuron whose output column is zero loses nothing: an (almost) unregularised
    refit must give back the dense layer."""
    loaded, plan = _lossless_cut(tmp_path)
    pruned = apply_plan(loaded, plan, quantize=False)
    assert refit_projections(loaded, pruned, TEXTS, ridge=1e-9) == {"1.ffn": 1e-9}
    batch = sample_batch(loaded.tokenizer)
    assert (outputs(pruned.model, batch) - outputs(loaded.model, batch)).abs().max().item() < 1e-3


def test_lsq_chooses_the_ridge_that_does_best_on_validation_text(tmp_path):
    """Where nothing was lost the exact refit is best on any text, so validation picks the
    weakest ridge; without validation text the default is used."""
    loaded, plan = _lossless_cut(tmp_path)
    chosen = refit_projections(loaded, apply_plan(loaded, plan, quantize=False), TEXTS[::2], TEXTS[1::2])
    assert chosen == {"1.ffn": min(RIDGES)}
    assert refit_projections(loaded, apply_plan(loaded, plan, quantize=False), TEXTS) == {"1.ffn": DEFAULT_RIDGE}


def test_held_out_error_from_statistics_is_the_squared_error_less_a_constant():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    for _ in range(3):
        w = torch.randn(6, 3, generator=generator, dtype=torch.float64)
        direct = float((x @ w - y).pow(2).sum() - y.pow(2).sum())
        assert _held_out_error(w, x.T @ x, x.T @ y) == pytest.approx(direct, rel=1e-9, abs=1e-9)


def test_recovery_then_int8_quantizes_after_refit(tmp_path):
    loaded = load_model(str(save_tiny_model("bert", tmp_path / "bert")))
    table = layer_table(loaded.model)
    plan = CompressionPlan([LayerPlan(keep_neurons=list(range(info.ffn // 2)), weights=Precision.INT8) for info in table])
    compressed = compress(loaded, plan, "lsq", TEXTS)
    fidelity = embedding_fidelity(embed(loaded.model, loaded.tokenizer, TEXTS[:8]),
                                  embed(compressed.model, compressed.tokenizer, TEXTS[:8]))
    assert fidelity["mean_cosine"] > 0.5
    projection = compressed.model.encoder.layer[0].output.dense
    assert type(projection).__name__ == "Linear" and hasattr(projection, "_packed_params")


def test_unknown_methods_are_user_errors(tmp_path):
    loaded = load_model(str(save_tiny_model("bert", tmp_path / "bert")))
    with pytest.raises(UserError, match="unknown importance method"):
        importance_scores(loaded, TEXTS, method="psychic")
    with pytest.raises(UserError, match="unknown recovery"):
        compress(loaded, CompressionPlan.dense(3), recovery="prayer")
    with pytest.raises(UserError, match="needs calibration text"):
        compress(loaded, CompressionPlan([LayerPlan(keep_neurons=[0, 1])] * 3), recovery="lsq", calibration=[])


def test_recovery_parse_takes_every_method_and_names_the_choices_for_an_unknown_one():
    for method in Recovery:
        assert Recovery.parse(method.value) is method and Recovery.parse(method) is method
    assert [m for m in Recovery if m.refits] == [Recovery.LSQ, Recovery.LSQ_DISTILL]
    assert [m for m in Recovery if m.distills] == [Recovery.DISTILL, Recovery.LSQ_DISTILL]
    with pytest.raises(UserError) as raised:
        Recovery.parse("prayer")
    assert str(raised.value) == "unknown recovery 'prayer'; use one of none, lsq, distill, lsq+distill"


@pytest.mark.parametrize("cut", ["heads", "neurons"])
def test_refit_from_dense_statistics_equals_the_sequential_refit_of_a_first_layer(tiny, cut):
    """In the first layer a pruned projection's kept inputs are exactly the dense ones, so
    the one-solve refit from projection_grams must match refit_projections there."""
    adapter = adapter_for(tiny.model)
    table = layer_table(tiny.model)
    groups = list(range(0, table[0].kv_heads, 2))
    neurons = list(range(0, table[0].ffn, 2))
    first = LayerPlan(keep_groups=groups) if cut == "heads" else LayerPlan(keep_neurons=neurons)
    plan = CompressionPlan([first] + [LayerPlan() for _ in table[1:]])
    pruned = apply_plan(tiny, plan, quantize=False)
    by_subset = copy.deepcopy(pruned)
    refit_projections(tiny, pruned, TEXTS)
    grams = projection_grams(tiny, TEXTS)
    dense_layer, layer = adapter.layers(tiny.model)[0], adapter.layers(by_subset.model)[0]
    head_dim = adapter.head_dim(tiny.model)
    if cut == "heads":
        module = adapter.attention_output(layer)
        refit_to_subset(module, adapter.attention_output(dense_layer), grams["0.attn"],
                        adapter.attention_output_columns(dense_layer, groups, head_dim))
        expected = adapter.attention_output(adapter.layers(pruned.model)[0])
    else:
        module = adapter.ffn_output(layer)
        refit_to_subset(module, adapter.ffn_output(dense_layer), grams["0.ffn"], torch.tensor(neurons))
        expected = adapter.ffn_output(adapter.layers(pruned.model)[0])
    assert torch.allclose(module.weight, expected.weight, rtol=1e-3, atol=1e-4)
    if expected.bias is not None:
        assert torch.allclose(module.bias, expected.bias, rtol=1e-3, atol=1e-4)


def test_each_refit_solves_least_squares_on_the_inputs_the_whole_compressed_model_gives_it(tiny):
    """Refit layer by layer from recorded calls, a projection must satisfy the ridge normal
    equations on its inputs in a full forward pass of the refit model (a dropped layer and
    an earlier refit before it), against the dense projection's outputs in a full dense
    pass. (A layer's projections are refit together, from one pass: its FFN sees the
    attention output before the attention's refit, so its FFN is not checked here.)"""
    table = layer_table(tiny.model)
    plan = CompressionPlan([LayerPlan(keep_neurons=list(range(0, table[0].ffn, 2))), LayerPlan(drop=True),
                            LayerPlan(keep_groups=[0], keep_neurons=list(range(table[2].ffn // 2)))])
    pruned = apply_plan(tiny, plan, quantize=False)
    refit_projections(tiny, pruned, TEXTS, ridge=DEFAULT_RIDGE)
    small, dense = adapter_for(pruned.model), adapter_for(tiny.model)
    for name, projection, source in [("0.ffn", small.ffn_output(small.layers(pruned.model)[0]),
                                      dense.ffn_output(dense.layers(tiny.model)[0])),
                                     ("2.attn", small.attention_output(small.layers(pruned.model)[1]),
                                      dense.attention_output(dense.layers(tiny.model)[2]))]:
        inputs, targets = [], []
        watch_inputs(pruned.model, pruned.tokenizer, TEXTS, {name: projection}, lambda _, x: inputs.append(x))
        watch_inputs(tiny.model, tiny.tokenizer, TEXTS, {name: source}, lambda _, x: targets.append(_apply(source, x)))
        x = torch.cat(inputs).double()
        ridge = DEFAULT_RIDGE * (x * x).sum(0).mean()
        weights = output_weight(projection).T.double()
        if projection.bias is not None:  # the bias is the weight of a column of ones
            x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
            weights = torch.cat([weights, projection.bias.detach()[None].double()])
        y, gram = torch.cat(targets).double(), x.T @ x
        residual = (gram + ridge * torch.eye(len(gram), dtype=torch.float64)) @ weights - x.T @ y
        assert residual.abs().max().item() < 1e-4 * (x.T @ y).abs().max().item(), name
