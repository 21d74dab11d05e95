"""A pruned decoder (a different number of KV groups and FFN neurons in each layer, a layer
dropped, each layer's weights in its own precision) delivered for OpenVINO GenAI: the
folder generates with LLMPipeline and loads with optimum-intel's OVModelForCausalLM,
exactly as README tells users to, and with float weights it generates PyTorch's tokens."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import openvino as ov
import openvino_genai
import pytest
import torch
from optimum.intel import OVModelForCausalLM

from compress_models import save_tiny_model
from ppocompress.compress import CompressionPlan, LayerPlan, Precision, apply_plan, load_model
from ppocompress.compress.ops.weight_compression import asymmetric_weights
from ppocompress.compress.runtimes import get_runtime

NEW_TOKENS = 12
F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # this CPU computes in bf16 by default; PyTorch's tokens need f32
# (The FFN widths avoid 32: OpenVINO 2026.4 on this CPU crashes at bf16 on a 32-neuron FFN of a 32-wide model.)
FLOAT_PLAN = CompressionPlan([LayerPlan(keep_groups=[0, 2], keep_neurons=list(range(40))), LayerPlan(drop=True),
                              LayerPlan(keep_groups=[1, 2, 3], keep_neurons=list(range(16)))])
MIXED_PLAN = CompressionPlan([LayerPlan(keep_groups=[0, 2], keep_neurons=list(range(40)), weights=Precision.INT4),
                              LayerPlan(drop=True),
                              LayerPlan(keep_groups=[1, 2, 3], keep_neurons=list(range(16)), weights=Precision.INT8)],
                             head=Precision.INT8)
LINEARS = [f"{part}.{name}_proj" for part, names in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down"))) for name in names]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return load_model(str(save_tiny_model("llama", tmp_path_factory.mktemp("llama") / "dense", seed=4)))


def _deliver(dense, plan, directory):
    model = apply_plan(dense, plan, quantize=False)
    artifact = get_runtime("openvino").export(model, directory, [])
    return model, artifact.parent


def _prompt(model) -> np.ndarray:
    return model.tokenizer("the river runs past the old mill", return_tensors="np")["input_ids"]


def _genai_tokens(folder, ids: np.ndarray, **properties) -> list[int]:
    pipe = openvino_genai.LLMPipeline(str(folder), "CPU", **properties)
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = NEW_TOKENS
    config.apply_chat_template = False
    return list(pipe.generate(openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config).tokens[0])


def _optimum_tokens(folder, ids: np.ndarray, **properties) -> list[int]:
    model = OVModelForCausalLM.from_pretrained(str(folder), device="CPU", ov_config=properties)
    out = model.generate(torch.from_numpy(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


def _greedy_up_to_near_ties(folder, ids: np.ndarray, tokens: list[int], margin: float) -> bool:
    """Whether optimum-intel's model, fed `tokens` after the prompt, gives each of them a logit
    within `margin` of its best at that step: the same greedy choice, up to a near-tie."""
    model = OVModelForCausalLM.from_pretrained(str(folder), device="CPU", ov_config=F32)
    sequence = torch.from_numpy(np.concatenate([ids, np.array([tokens])], axis=1))
    with torch.no_grad():
        logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits[0]
    steps = logits[ids.shape[1] - 1:-1]
    chosen = steps[torch.arange(len(tokens)), torch.tensor(tokens)]
    return bool((chosen >= steps.max(dim=-1).values - margin).all())


def test_float_weights_generate_pytorchs_tokens_in_genai_and_optimum(dense, tmp_path):
    model, folder = _deliver(dense, FLOAT_PLAN, tmp_path / "float")
    ids = _prompt(model)
    with torch.no_grad():
        theirs = model.model.generate(torch.from_numpy(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                                      max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    expected = theirs[0, ids.shape[1]:].tolist()
    assert _genai_tokens(folder, ids, **F32) == expected
    assert _optimum_tokens(folder, ids, **F32) == expected
    assert (folder / "openvino_tokenizer.xml").is_file() and (folder / "openvino_detokenizer.xml").is_file()


def test_generation_from_text_through_the_converted_tokenizer(dense, tmp_path):
    _, folder = _deliver(dense, FLOAT_PLAN, tmp_path / "float")
    pipe = openvino_genai.LLMPipeline(str(folder), "CPU")
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens, config.apply_chat_template = 5, False
    assert isinstance(pipe.generate("the river runs", config), str)


def _weight_types(folder) -> dict[str, set[str]]:
    """The element types of the weight constants ("u4", "u8", "f16"), keyed by module path
    ("model.layers.0.mlp.up_proj"); a tied embedding and head are one constant."""
    graph = ov.Core().read_model(str(folder / "openvino_model.xml"))
    found: dict[str, set[str]] = {}
    for op in graph.get_ordered_ops():
        name = op.get_friendly_name().removesuffix("_compressed")  # OpenVINO's suffix for a stored-smaller constant
        if op.get_type_name() == "Constant" and name.endswith(".weight"):
            module = name.removesuffix(".weight").removeprefix("__module.model.").removeprefix("self.model.")
            found.setdefault(module, set()).add(op.get_output_element_type(0).get_type_name())
    return found


def test_each_layer_is_stored_in_its_own_precision(dense, tmp_path):
    model, folder = _deliver(dense, MIXED_PLAN, tmp_path / "mixed")
    types = _weight_types(folder)
    for linear in LINEARS:
        assert types[f"model.layers.0.{linear}"] == {"u4"}
        assert types[f"model.layers.1.{linear}"] == {"u8"}  # the third layer, renumbered
    assert types["lm_head"] == types["model.embed_tokens"] == {"u8"}  # the head choice covers the embedding
    ids = _prompt(model)
    assert _genai_tokens(folder, ids, **F32) == _optimum_tokens(folder, ids, **F32)


def test_float_layers_beside_compressed_ones_are_stored_in_fp16(dense, tmp_path):
    """OpenVINO's save_model halves float weights only in a graph with none compressed, so
    the export converts them itself: a mixed plan's float layers cost the bytes priced."""
    plan = CompressionPlan([LayerPlan(weights=Precision.INT8), LayerPlan(), LayerPlan(drop=True)])
    _, folder = _deliver(dense, plan, tmp_path / "mixed")
    types = _weight_types(folder)
    assert all(types[f"model.layers.0.{linear}"] == {"u8"} for linear in LINEARS)
    assert all(types[f"model.layers.1.{linear}"] == {"f16"} for linear in LINEARS)
    assert types["model.embed_tokens"] == {"f16"}  # the float head, tied to the embedding


def test_session_gives_the_models_logits_and_times_generation(dense, tmp_path):
    model, folder = _deliver(dense, FLOAT_PLAN, tmp_path / "float")
    session = get_runtime("openvino").session(folder / "openvino_model.xml", threads=1)
    ids = model.tokenizer(["a short one", "a somewhat longer line of text here"], padding=True, return_tensors="np")
    logits = session(ids["input_ids"], ids["attention_mask"])
    with torch.no_grad():
        expected = model.model(input_ids=torch.from_numpy(ids["input_ids"]),
                               attention_mask=torch.from_numpy(ids["attention_mask"])).logits.numpy()
    kept = ids["attention_mask"].astype(bool)
    assert session.vocab_size == model.model.config.vocab_size
    assert np.abs(logits - expected)[kept].max() < 0.05 * np.abs(expected).max()  # bf16 compute
    assert (logits.argmax(-1) == expected.argmax(-1))[kept].mean() > 0.9
    prefill_s, decode_s = session.generate_timed(_prompt(model), 8)
    assert prefill_s > 0 and decode_s > 0


@pytest.mark.parametrize("bits, group", [(8, None), (4, 16)])
def test_asymmetric_weights_are_on_their_grid_within_half_a_step(bits, group):
    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(bits))
    rounded = asymmetric_weights(weight, bits, group)
    grouped = weight.reshape(24, -1, group or 64)
    step = ((grouped.amax(-1).clamp(min=0) - grouped.amin(-1).clamp(max=0)) / (2 ** bits - 1))[..., None]
    assert ((rounded.reshape(grouped.shape) - grouped).abs() <= step / 2 + 1e-6).all()
    multiples = rounded.reshape(grouped.shape) / step  # (q - zero point) * step: whole steps from zero
    assert (multiples - multiples.round()).abs().max() < 1e-3
    distinct = max(len(torch.unique(row)) for row in rounded.reshape(-1, group or 64))
    assert distinct <= 2 ** bits


@pytest.mark.slow  # the real SmolLM2-135M: traced, int4/int8 compressed by NNCF, its BPE tokenizer converted
def test_the_real_smollm2_in_a_mixed_plan_generates_in_genai_as_in_optimum(tmp_path):
    dense = load_model("smollm2")
    layers = [LayerPlan(weights=[Precision.INT4, Precision.INT8, Precision.FLOAT][i % 3]) for i in range(30)]
    layers[3] = LayerPlan(keep_groups=[0, 2], keep_neurons=list(range(1024)), weights=Precision.INT4)
    layers[27] = LayerPlan(drop=True)
    model, folder = _deliver(dense, CompressionPlan(layers, head=Precision.INT8), tmp_path / "smollm2")
    types = _weight_types(folder)
    assert types["model.layers.3.self_attn.k_proj"] == {"u4"} and types["model.layers.1.mlp.down_proj"] == {"u8"}
    assert types["model.embed_tokens"] == {"u8"}  # tied to the output head
    assert types["model.layers.2.mlp.down_proj"] == {"f16"}
    assert not any(name.startswith("model.layers.29.") for name in types)  # 30 layers, one dropped
    ids = model.tokenizer("The capital of France is", return_tensors="np")["input_ids"]
    tokens = _genai_tokens(folder, ids, **F32)
    # The runtimes' attention kernels differ in the last digits, so where optimum-intel's two
    # best logits are a near-tie GenAI may take the other one (seen: 15.537 against 15.476).
    assert _greedy_up_to_near_ties(folder, ids, tokens, margin=0.1)
    # From text, through the converted tokenizer and detokenizer: what Hugging Face's make of the same tokens.
    pipe = openvino_genai.LLMPipeline(str(folder), "CPU", **F32)
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = NEW_TOKENS
    config.apply_chat_template = False
    assert pipe.generate("The capital of France is", config) == model.tokenizer.decode(tokens)


def test_readmes_decoder_loading_lines_run_on_a_delivered_folder(dense, tmp_path, monkeypatch, capsys):
    """The lines README gives users, run as they are, from a folder laid out as delivered."""
    _, folder = _deliver(dense, MIXED_PLAN, tmp_path / "runs" / "compress" / "model" / "openvino")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- readme:decoder-loading -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(textwrap.dedent(block), {})
    assert capsys.readouterr().out.strip()  # the generated text was printed


def test_nncfs_mixed_precision_puts_int4_on_the_ratio_asked(dense, tmp_path):
    from ppocompress.compress.runtimes.openvino_llm import export_nncf_mixed

    texts = [f"passage {i} on the river and the mill" for i in range(8)]
    sizes = {}
    for ratio in (0.0, 0.5, 1.0):
        folder = export_nncf_mixed(dense, tmp_path / f"r{ratio}", ratio, texts).parent
        types = _weight_types(folder)
        int4 = sum("u4" in types.get(f"model.layers.{i}.{linear}", set()) for i in range(3)
                   for linear in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj"))
        sizes[ratio] = (folder / "openvino_model.bin").stat().st_size
        assert (int4 == 0) if ratio == 0 else (int4 == 9 if ratio == 1 else 0 < int4 < 9)
        assert types["lm_head"] == {"u8"}  # NNCF keeps the head in int8
    assert sizes[1.0] < sizes[0.5] < sizes[0.0]
