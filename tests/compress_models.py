"""Tiny random models of every supported family, saved the way a user's model is."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MPNetConfig,
    MPNetModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaModel,
)

from ppocompress.compress.models.embedded import minilm_dir

VOCAB = 30522  # the embedded MiniLM tokenizer's, reused by every tiny model
# Text for a job on a tiny model: enough lines for calibration, validation and evaluation.
PASSAGES = [f"passage {i} is about {w} and how it changes over the years" for i, w in
            enumerate(["rivers", "cities", "music", "trade", "weather", "sport", "law", "food", "roads", "stars"] * 12)]


def _decoder_kwargs() -> dict:
    return dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                num_attention_heads=8, num_key_value_heads=4, head_dim=4, max_position_embeddings=128)


def _mpnet() -> MPNetModel:
    """A tiny MPNet whose relative position bias is as large as the attention scores: a layer
    that added another head's bias (or none) would give other outputs."""
    model = MPNetModel(MPNetConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                   intermediate_size=48, max_position_embeddings=130))
    with torch.no_grad():
        model.encoder.relative_attention_bias.weight.normal_(0.0, 2.0)
    return model


FAMILIES = {
    "bert": lambda: BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                         intermediate_size=48, max_position_embeddings=128)),
    "roberta": lambda: RobertaModel(RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                  intermediate_size=48, max_position_embeddings=130, pad_token_id=1)),
    "mpnet": _mpnet,
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_inner=48, n_positions=128)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**_decoder_kwargs())),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**_decoder_kwargs())),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**_decoder_kwargs(), sliding_window=None)),
}


def save_tiny_model(family: str, directory: Path, seed: int = 0) -> Path:
    """Builds a tiny random model of the family and saves it with its tokenizer."""
    torch.manual_seed(seed)
    model = FAMILIES[family]().eval()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tokenizer.save_pretrained(directory)
    return directory


def sample_batch(tokenizer) -> dict:
    """Two sentences of different length, so the batch has padding."""
    return tokenizer(["the cat sat on the mat today", "short one"], return_tensors="pt", padding=True)


def outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


# A few short passages on different topics: enough text for a command's calibration and evaluation on a tiny model.
SHORT_LINES = [f"passage {i} is about {w} and how it changes over time" for i, w in
               enumerate(["rivers", "cities", "music", "trade", "weather", "sport", "law", "food"] * 5)]
