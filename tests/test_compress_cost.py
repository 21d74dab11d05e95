"""Parameter, byte and FLOP counts."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from ppocompress.compress.measure.cost import (
    count_parameters,
    directory_bytes,
    model_bytes,
    model_flops,
)
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
