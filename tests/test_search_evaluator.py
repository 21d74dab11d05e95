"""Plan evaluation (layer database, swapping, fidelity) and cost tables on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress_models import outputs, sample_batch, save_tiny_model
from ppocompress.compress import CompressionPlan, LayerPlan, Precision, apply_plan, load_model
from ppocompress.compress.measure.timing import TimingSetup
from ppocompress.compress.ops.importance import importance_scores
from ppocompress.search import default_menu
from ppocompress.search import evaluator as evaluator_module
from ppocompress.search.cost_table import (
    NARROWEST_FIRST,
    CostTable,
    anchor_reference,
    fit_time_model,
    flops_table,
    level_features,
    measured_table,
    timing_plans,
)
from ppocompress.search.evaluator import (
    PlanEvaluator,
    compression_plan,
    drop_pair_table,
    sensitivity_table,
)
from ppocompress.search.plan import Plan
from ppocompress.search.reward import fidelity_from_reward, reward_from_fidelity

TEXTS = [f"passage {i} about {w} and the way it shapes the day" for i, w in
         enumerate(["rain", "maps", "songs", "bread", "ships", "clocks", "trees", "coins"] * 10)]
MENU = default_menu()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(str(save_tiny_model("bert", tmp_path_factory.mktemp("bert"))))


@pytest.fixture(scope="module")
def evaluator(tiny):
    return PlanEvaluator(tiny, MENU, importance_scores(tiny, TEXTS[:32]), TEXTS, low_fidelity=16, high_fidelity=48)


def level_index(**fields) -> int:
    return next(i for i, level in enumerate(MENU) if all(getattr(level, k) == v for k, v in fields.items()))


def test_dense_plan_has_quality_one(evaluator):
    assert evaluator.quality(Plan.uniform(0, 3)) == pytest.approx(1.0, abs=1e-5)


def test_swapped_model_equals_the_applied_plan_and_restores(tiny, evaluator):
    half = level_index(group_keep=0.5, neuron_keep=0.5, weights=Precision.FLOAT)
    drop = level_index(drop=True)
    plan = Plan.of([half, drop, 0])
    batch = sample_batch(tiny.tokenizer)
    before = outputs(tiny.model, batch)
    with evaluator.swapped(plan) as model:
        swapped = outputs(model, batch)
        assert len(model.encoder.layer) == 2
    scores = evaluator.scores
    keep_groups = sorted(torch.topk(scores[0].groups, 2).indices.tolist())
    keep_neurons = sorted(torch.topk(scores[0].neurons, 24).indices.tolist())
    applied = CompressionPlan([LayerPlan(keep_groups=keep_groups, keep_neurons=keep_neurons), LayerPlan(drop=True), LayerPlan()])
    assert torch.allclose(swapped, outputs(apply_plan(tiny, applied).model, batch), atol=1e-5)
    assert torch.equal(outputs(tiny.model, batch), before)  # the dense model is back
    assert len(tiny.model.encoder.layer) == 3 and tiny.model.config.num_hidden_layers == 3


@pytest.mark.parametrize("family", ["bert", "mpnet", "llama"])
def test_replaying_the_dense_layers_before_a_plan_s_first_compressed_one_changes_no_quality(family, tmp_path, monkeypatch):
    model = load_model(str(save_tiny_model(family, tmp_path / family)))
    scores = importance_scores(model, TEXTS[:32])
    runtime = "torch" if family == "llama" else "onnxruntime"
    replaying = PlanEvaluator(model, MENU, scores, TEXTS, low_fidelity=16, high_fidelity=48, runtime=runtime)
    half, drop = level_index(group_keep=0.5, neuron_keep=0.5, weights=Precision.INT8), level_index(drop=True)
    plans = [Plan.of([0, half, 0]), Plan.of([0, 0, drop]), Plan.of([half, 0, 0]), Plan.of([0, drop, half])]
    replayed = [replaying.quality(plan, fidelity) for plan in plans for fidelity in ("probe", "low", "low")]
    monkeypatch.setattr(evaluator_module, "REPLAYED", ())
    computing = PlanEvaluator(model, MENU, scores, TEXTS, low_fidelity=16, high_fidelity=48, runtime=runtime)
    assert replayed == [computing.quality(plan, fidelity) for plan in plans for fidelity in ("probe", "low", "low")]
    assert set(replaying._recorded) == {"probe", "low"} and not computing._recorded


def test_the_layer_database_keeps_the_most_recently_used_layers_within_its_bytes(tiny, monkeypatch):
    evaluator = PlanEvaluator(tiny, MENU, importance_scores(tiny, TEXTS[:32]), TEXTS, low_fidelity=16, high_fidelity=48)
    one = sum(t.numel() * t.element_size() for t in evaluator.layer(0, 1).parameters())
    monkeypatch.setattr(evaluator_module, "LAYER_CACHE_BYTES", int(2.5 * one))
    plan = Plan.of([1, 1, 1])
    first = evaluator.quality(plan)
    assert list(evaluator._layers) == [(1, 1), (2, 1)]  # layer 0's level 1, used first, made room
    evaluator.layer(1, 1)
    evaluator.layer(0, 1)  # built again: layer 2's is now the least recently used
    assert list(evaluator._layers) == [(1, 1), (0, 1)]
    assert evaluator.quality(plan) == first


def test_layers_are_built_once(evaluator):
    level = level_index(group_keep=0.25, neuron_keep=0.25, weights=Precision.INT8)
    assert evaluator.layer(1, level) is evaluator.layer(1, level)


def test_fidelities_use_their_own_subsets(evaluator):
    plan = Plan.uniform(level_index(group_keep=0.25, neuron_keep=0.25, weights=Precision.FLOAT), 3)
    low, high = evaluator.quality(plan, "low"), evaluator.quality(plan, "high")
    assert low < 1.0 and high < 1.0 and low != high
    assert len(evaluator.fidelity["high"].texts) == 48


def test_sensitivity_is_zero_for_dense_and_positive_for_heavy_levels(evaluator):
    table = sensitivity_table(evaluator.qualities, len(evaluator.table), len(evaluator.menu))
    heavy = level_index(group_keep=0.25, neuron_keep=0.25, weights=Precision.INT8)
    assert len(table) == 3 and all(len(row) == len(MENU) for row in table)
    assert all(row[0] == 0.0 and row[heavy] > 0.0 for row in table)


def test_an_interrupted_sensitivity_table_goes_on_from_its_saved_layers(evaluator):
    full = sensitivity_table(evaluator.qualities, len(evaluator.table), len(evaluator.menu))
    saved = []
    rows = [list(full[0])]
    resumed = sensitivity_table(evaluator.qualities, len(evaluator.table), len(evaluator.menu), rows=rows,
                                on_layer=lambda done: saved.append(len(done)))
    assert resumed is rows and resumed == full
    assert saved == [2, 3]  # only the layers left are measured, each reported as it is done


def test_the_drop_pair_table_measures_every_pair_of_dropped_layers_once_and_resumes(evaluator):
    drop = next(i for i, level in enumerate(evaluator.menu) if level.drop)
    table = drop_pair_table(evaluator.qualities, 3, drop)
    assert [len(row) for row in table] == [2, 1]
    assert table[0][1] == pytest.approx(1.0 - evaluator.quality(Plan.of([drop, 0, drop]), "probe"))
    saved = []
    rows = [list(table[0])]
    resumed = drop_pair_table(evaluator.qualities, 3, drop, rows=rows, on_row=lambda done: saved.append(len(done)))
    assert resumed is rows and resumed == table and saved == [2]


def test_reward_grows_with_cosine():
    assert reward_from_fidelity(0.99) > reward_from_fidelity(0.9) > reward_from_fidelity(0.5)
    assert reward_from_fidelity(1.0) == pytest.approx(13.8155, rel=1e-4)  # capped, not infinite


@pytest.mark.parametrize("fidelity", [0.0, 0.5, 0.9, 0.999, 0.99999])
def test_fidelity_from_reward_undoes_reward_from_fidelity(fidelity):
    assert fidelity_from_reward(reward_from_fidelity(fidelity)) == pytest.approx(fidelity, abs=1e-12)


def test_the_engine_plan_keeps_the_top_units_by_importance_or_the_first_ones_for_pricing(evaluator):
    half = level_index(group_keep=0.5, neuron_keep=0.5, weights=Precision.INT8)
    drop = level_index(drop=True)
    plan = Plan.of([half, drop, 0])
    scored, priced = evaluator.plan(plan), compression_plan(plan, MENU, evaluator.table, head=evaluator.head)
    top = evaluator.scores[0]
    assert scored.layers[0].keep_groups == sorted(torch.topk(top.groups, 2).indices.tolist())
    assert scored.layers[0].keep_neurons == sorted(torch.topk(top.neurons, 24).indices.tolist())
    assert priced.layers[0].keep_groups == [0, 1] and priced.layers[0].keep_neurons == list(range(24))
    for layers in (scored.layers, priced.layers):
        assert layers[0].weights == Precision.INT8 and layers[2].keep_groups is None
        assert layers[1].drop and layers[1].weights == Precision.FLOAT


def test_flops_table_prices_levels(tiny):
    table = flops_table(tiny, MENU)
    dense, drop = table.per_level[0], table.per_level[level_index(drop=True)]
    half = table.per_level[level_index(group_keep=0.5, neuron_keep=0.5, weights=Precision.FLOAT)]
    half_int8 = table.per_level[level_index(group_keep=0.5, neuron_keep=0.5, weights=Precision.INT8)]
    assert drop == 0.0 and half_int8 < half < dense and table.base >= 0  # encoders: no head to count
    assert table.speedup([0, 0, 0]) == pytest.approx(1.0)


@pytest.mark.slow  # a latency subprocess per timed model
def test_measured_table_is_fitted_to_a_few_models_and_cached(tiny, tmp_path):
    setup = TimingSetup(batch_size=4, seq_len=16, rounds=1, repeats=2, warmup=1)
    table = measured_table(tiny, MENU, "onnxruntime", setup, TEXTS, cache_folder=tmp_path, log=lambda _: None)
    assert table.unit == "ms" and table.runtime == "onnxruntime" and table.per_level[level_index(drop=True)] == 0.0
    assert all(c >= 0 for c in table.per_level) and table.reference > 0 and table.dense_total > 0
    timed = [row["label"] for row in table.fit]
    assert len(timed) == len(timing_plans(MENU, 3)) < len(MENU)  # fewer models than levels
    mixed = [row for row in table.fit if row["label"].startswith("mixed")]
    assert mixed and all(row["measured_ms"] > 0 and row["predicted_ms"] > 0 for row in mixed)
    assert table.fit_error() == max(abs(row["predicted_ms"] / row["measured_ms"] - 1) for row in mixed)
    again = measured_table(tiny, MENU, "onnxruntime", setup, TEXTS, cache_folder=tmp_path,
                           log=lambda _: pytest.fail("measured twice"))
    assert again == table


def test_a_model_timed_while_the_machine_was_busy_is_timed_again_and_its_faster_time_kept(tiny, tmp_path, monkeypatch):
    """Load only slows a timing down: a model measured far above the table's fit is timed
    again, its faster time kept, and the table is fitted to the machine's own speed."""
    from ppocompress.compress.measure.timing import summarise
    from ppocompress.search import cost_table

    # base, the fixed costs of int4 (unused: the menu has none), int8 and float, then the
    # per-unit costs (groups, neurons) of int4 and the increments of int8 and float
    theta = np.array([2.0, 0.0, 0.25, 0.5, 0.0, 0.0, 0.125, 0.5, 0.125, 0.5])
    plans = timing_plans(MENU, 3)
    truth = {label: float(np.array([1.0, *sum(level_features(level) for level in plan.chosen(MENU))]) @ theta)
             for label, plan in plans.items()} | {"reference": 40.0}
    busy, calls = "uniform h100-f100", []

    def measure(targets, setup):
        calls.append([label for label, _, _ in targets])
        slowed = len(calls) == 1  # busy during the first rounds only
        return {label: summarise([[truth[label] * (1.6 if slowed and label == busy else 1.0)]], runtime, setup.statistic)
                for label, _, runtime in targets}

    monkeypatch.setattr(cost_table, "measure_latencies", measure)
    monkeypatch.setattr(cost_table, "get_runtime", lambda name: type("Exported", (), {"export": lambda self, m, path, c: path})())
    table = measured_table(tiny, MENU, "onnxruntime", TimingSetup(rounds=1), TEXTS, cache_folder=tmp_path, log=lambda _: None)
    assert calls[1:] == [[busy]]
    assert {row["label"]: row["measured_ms"] for row in table.fit}[busy] == pytest.approx(truth[busy])
    assert table.base == pytest.approx(theta[0]) and table.fit_error() == pytest.approx(0.0, abs=1e-9)


def test_level_costs_follow_the_time_model():
    """A level's cost is its precision's fixed cost plus its costs per fraction of groups
    and of neurons kept, each the narrower precision's plus an increment; dropping is free."""
    theta = np.array([1.0, 0.5, 0.75, 0.25, 0.5, 0.25, 0.5, 0.5, 1.0])  # fixed int4, int8, float; per unit: int4, +int8, +float
    terms = {Precision.INT4: [1.0, 0.25, 0.5], Precision.INT8: [0.5, 0.5, 1.0], Precision.FLOAT: [0.75, 1.0, 2.0]}
    for level in default_menu(precisions=NARROWEST_FIRST):
        expected = 0.0 if level.drop else np.dot(terms[level.weights], [1.0, level.group_keep, level.neuron_keep])
        assert level_features(level) @ theta == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_a_kept_unit_never_costs_less_in_a_wider_precision(seed):
    """Whatever the timings (a busy machine once timed float models faster than int8 ones),
    keeping more groups or neurons adds at least as much cost in a wider precision as in a
    narrower one, so noise cannot steer the search into float layers."""
    rng = np.random.default_rng(seed)
    menu = default_menu(precisions=NARROWEST_FIRST)
    plans = list(timing_plans(menu, 4).values())
    features = np.array([[1.0, *sum(level_features(level) for level in plan.chosen(menu))] for plan in plans])
    solution = fit_time_model(features, rng.uniform(1.0, 20.0, len(plans)))
    price = {(level.group_keep, level.neuron_keep, level.weights): level_features(level) @ solution[1:]
             for level in menu if not level.drop}
    smallest = min(level.group_keep for level in menu), min(level.neuron_keep for level in menu)
    for (groups, neurons, precision), cost in price.items():
        if precision != NARROWEST_FIRST[0]:
            narrower = NARROWEST_FIRST[NARROWEST_FIRST.index(precision) - 1]
            added = cost - price[(*smallest, precision)]
            assert added >= price[(groups, neurons, narrower)] - price[(*smallest, narrower)] - 1e-12


def test_anchor_reference_scales_the_table_by_the_ratio_timed_now():
    """A reference timed under load once must not skew later runs: each run re-times dense
    PyTorch and the dense model on the table's runtime side by side, keeps the table's
    scale and the lower of the two ratios."""
    table = CostTable("ms", 10.0, [40.0, 20.0, 0.0], 3, reference=404.0, runtime="openvino")
    anchored = anchor_reference(table, 330.0, 300.0, log=lambda _: None)
    assert anchored.reference == pytest.approx(table.dense_total * 330.0 / 300.0)
    assert anchored.per_level == table.per_level and anchored.base == table.base
    # PyTorch under load: a ratio higher than the table's is not trusted.
    quiet = CostTable("ms", 10.0, [40.0, 20.0, 0.0], 3, reference=130.0 * 1.05, runtime="onnxruntime")
    assert anchor_reference(quiet, 330.0, 300.0, log=lambda _: None).reference == pytest.approx(quiet.reference)
    flops = CostTable("flops", 1.0, [3.0, 0.0], 3)
    assert anchor_reference(flops, 330.0, 300.0, log=pytest.fail) is flops
