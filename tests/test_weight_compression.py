"""int4 as NNCF's data-aware weight compression computes it, simulated for the search: on
its grid, never worse than data-free rounding where it fits, AWQ only where it gains, and
the statistics it fits to as a pruned layer sees them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from compress_models import save_tiny_model
from ppocompress.compress import load_model
from ppocompress.compress.data.calibration import input_statistics
from ppocompress.compress.ops.importance import importance_scores
from ppocompress.compress.ops.quantize import InputStatistics
from ppocompress.compress.ops.weight_compression import (
    asymmetric_grid,
    awq_scale,
    data_aware_int4,
    estimated_int4,
    simulate_weight_compression_,
)
from ppocompress.search import evaluator as evaluator_module
from ppocompress.search.evaluator import PlanEvaluator
from ppocompress.search.levels import default_menu
from ppocompress.search.plan import Plan
from ppocompress.search.prepare import DECODER_PRECISIONS

TEXTS = [f"the {w} of the town changed a lot over {n} years, said {name}" for n, (w, name) in
         enumerate(zip(["river", "market", "school", "road", "music", "bridge", "church", "harbour"] * 3,
                       ["ann", "bob", "carl"] * 8))]


def _layer_case(seed: int, rows: int = 6, groups: int = 3, group: int = 16, passages: int = 12):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, groups * group, generator=generator)
    means = torch.randn(passages, groups * group, generator=generator) * torch.rand(groups * group, generator=generator) * 3
    return weight, means, group


def _group_errors(weight: torch.Tensor, rounded: torch.Tensor, x: torch.Tensor, group: int) -> torch.Tensor:
    """Mean squared output error on inputs x [in, passages], per row and group."""
    rows, columns = weight.shape
    delta = (weight - rounded).reshape(rows, columns // group, group)
    return torch.einsum("rgi,gin->rgn", delta, x.reshape(columns // group, group, -1)).pow(2).mean(dim=-1)


@given(st.integers(0, 10_000))
def test_scale_estimation_keeps_every_group_on_its_int4_grid_and_no_worse_than_min_max(seed):
    weight, means, group = _layer_case(seed)
    fitted = estimated_int4(weight, group, means.T)
    min_max, _, zero_point = asymmetric_grid(weight, 4, group)
    # Each group holds at most 16 values, evenly spaced, with 0 among the codes' range.
    for row in fitted.reshape(weight.shape[0], -1, group).reshape(-1, group):
        values = torch.unique(row)
        assert len(values) <= 16
        if len(values) > 1:
            steps = (values[1:] - values[:-1]) / (values[1:] - values[:-1]).min()
            assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert (_group_errors(weight, fitted, means.T, group) <= _group_errors(weight, min_max, means.T, group) + 1e-6).all()


def test_scale_estimation_fits_the_inputs_better_than_min_max_rounding():
    weight, means, group = _layer_case(7, rows=32, groups=4, group=32, passages=32)
    fitted = estimated_int4(weight, group, means.T)
    min_max, _, _ = asymmetric_grid(weight, 4, group)
    assert _group_errors(weight, fitted, means.T, group).sum() < 0.95 * _group_errors(weight, min_max, means.T, group).sum()


def test_awq_rescales_only_the_group_of_an_outlier_input_and_keeps_its_outputs_closer():
    weight, means, group = _layer_case(3, rows=16, groups=4, group=16, passages=16)
    means[:, 21] *= 40.0  # an outlier input channel in the second group
    x = means.T
    scale = awq_scale(weight, group, x)
    assert scale is not None
    assert torch.equal(scale[:16], torch.ones(16)) and torch.equal(scale[32:], torch.ones(32))
    columns = slice(16, 32)
    plain = asymmetric_grid(weight[:, columns], 4, group)[0]
    scaled = asymmetric_grid(weight[:, columns] * scale[columns], 4, group)[0] / scale[columns]
    dense = weight[:, columns] @ x[columns]
    assert (scaled @ x[columns] - dense).abs().mean() < (plain @ x[columns] - dense).abs().mean()
    # The whole step: AWQ's scale is exact in float, so the result still reproduces the weight closely.
    assert (data_aware_int4(weight, group, means, awq=True) - weight).abs().max() < weight.abs().max() / 4


def test_input_statistics_hold_each_passage_s_mean_over_its_own_tokens(tmp_path):
    llama = load_model(str(save_tiny_model("llama", tmp_path / "llama")))
    projection = llama.model.model.layers[0].mlp.down_proj
    texts = ["a short one", "a much longer passage that pads the first one in its batch"]
    statistics = input_statistics(llama.model, llama.tokenizer, texts, {"down": projection})["down"]
    seen = []
    handle = projection.register_forward_pre_hook(lambda _m, args: seen.append(args[0][0].mean(dim=0)))
    try:
        for text in texts:  # one passage at a time: no padding
            with torch.no_grad():
                llama.model(**llama.tokenizer(text, return_tensors="pt"), use_cache=False)
    finally:
        handle.remove()
    assert statistics.means.shape == (2, projection.in_features)
    for got in statistics.means:  # batches run shortest first
        assert any(torch.allclose(got, want, atol=1e-5) for want in seen)
    assert torch.equal(statistics.low, torch.minimum(statistics.low, statistics.means.amin(dim=0)))


@pytest.mark.parametrize("keep", ["h50-f50", "h100-f25"])
def test_a_pruned_layer_s_int4_statistics_are_the_dense_ones_cut_to_its_inputs(tmp_path, keep):
    llama = load_model(str(save_tiny_model("llama", tmp_path / "llama")))
    menu = default_menu(precisions=DECODER_PRECISIONS, groups=4)
    evaluator = PlanEvaluator(llama, menu, importance_scores(llama, TEXTS), TEXTS, low_fidelity=8, high_fidelity=16,
                              runtime="openvino")
    names = [level.name for level in menu]
    kept = evaluator.plan([names.index(f"{keep}-int4")] * 3).layers[1]
    cut = evaluator._dense_statistics(1, kept)
    # The same units kept in float: what the int4 layer's projections see before rounding.
    pruned = evaluator.layer(1, names.index(keep))
    own = evaluator._input_statistics(1, pruned, evaluator._int4_texts)
    # The FFN's inputs are exact only where the attention before it is whole.
    exact = ("self_attn.q_proj", "self_attn.o_proj") + (("mlp.up_proj", "mlp.down_proj") if keep.startswith("h100") else ())
    for name in exact:
        assert cut[name].means.shape == own[name].means.shape
        assert torch.allclose(cut[name].means, own[name].means, atol=1e-5), name


def test_rows_kept_by_pruning_are_the_whole_weight_s_fitted_rows_taken_from_the_cache():
    weight, means, group = _layer_case(11, rows=12)
    statistics = InputStatistics(means.amin(dim=0), means.amax(dim=0), means)
    whole = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    whole.weight.data = weight.clone()
    simulate_weight_compression_(whole, 4, {"": statistics})
    assert torch.equal(whole.weight.data, estimated_int4(weight, group, means.T))
    fitted = len(statistics.fitted)
    rows = [0, 3, 4, 9]
    pruned = nn.Linear(weight.shape[1], len(rows), bias=False)
    pruned.weight.data = weight[rows].clone()
    simulate_weight_compression_(pruned, 4, {"": statistics})
    assert torch.equal(pruned.weight.data, whole.weight.data[rows]) and len(statistics.fitted) == fitted


def test_int4_layers_rebuilt_in_and_out_of_inference_mode_score_the_same(tmp_path, monkeypatch):
    """The fitted-rows cache is filled in one mode and read in the other (sensitivities run
    in inference mode, a search's plans outside it); the layer database forgets every layer."""
    llama = load_model(str(save_tiny_model("llama", tmp_path / "llama")))
    menu = default_menu(precisions=DECODER_PRECISIONS, groups=4)
    names = [level.name for level in menu]
    evaluator = PlanEvaluator(llama, menu, importance_scores(llama, TEXTS), TEXTS, low_fidelity=8, high_fidelity=16,
                              recovery="lsq", recovery_texts=TEXTS[16:], runtime="openvino")
    monkeypatch.setattr(evaluator_module, "LAYER_CACHE_BYTES", 1)
    plan = Plan.of([names.index("h100-f100-int4"), names.index("h50-f50-int4"), names.index("h75-f100-int4")])
    outside = evaluator.quality(plan)
    with torch.inference_mode():
        inside = evaluator.quality(plan)
    assert inside == outside == evaluator.quality(plan)
