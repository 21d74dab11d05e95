"""How close a compressed model stays to the dense one, as one number in (0, 1] that a
search maximises (1: the same outputs), with the dense outputs computed once:

- encoders: the mean cosine of mean-pooled sentence embeddings to the dense model's;
- causal LMs: exp(-KL), where KL is the divergence of the model's next-token
  distributions from the dense model's, averaged over tokens (EvoPress's objective:
  unlike perplexity it sees every change, also where both models are wrong).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ppocompress.compress.data.calibration import MAX_LENGTH
from ppocompress.compress.measure.quality import NextTokenReference, embed
from ppocompress.compress.models.loading import LoadedModel

CAUSAL_MAX_LENGTH = 64  # tokens of a passage a causal LM is scored on (most sentences are shorter)


class EmbeddingFidelity:
    """Mean cosine to the dense model's sentence embeddings of `texts`."""

    def __init__(self, dense: LoadedModel, texts: list[str], max_length: int = MAX_LENGTH):
        self.tokenizer = dense.tokenizer
        self.texts = texts
        self.max_length = max_length
        self.reference = embed(dense.model, dense.tokenizer, texts, max_length=max_length)

    def __call__(self, model: nn.Module) -> float:
        candidate = embed(model, self.tokenizer, self.texts, max_length=self.max_length)
        return float((candidate * self.reference).sum(dim=1).mean())

    @staticmethod
    def describe(fidelity: float) -> str:
        return f"cosine {fidelity:.4f}"


class NextTokenFidelity:
    """exp(-mean KL(dense || model)) over the real tokens of `texts`; the dense
    log-probabilities, one row of the vocabulary's size per token, are kept in float16."""

    def __init__(self, dense: LoadedModel, texts: list[str], max_length: int = CAUSAL_MAX_LENGTH):
        self.texts = texts
        self.reference = NextTokenReference(dense.model, dense.tokenizer, texts, max_length=max_length, dtype=torch.float16)

    def __call__(self, model: nn.Module) -> float:
        return math.exp(-self.reference.compare(model).kl)

    @staticmethod
    def describe(fidelity: float) -> str:
        return f"KL {-math.log(max(fidelity, 1e-300)):.4f}"


Fidelity = EmbeddingFidelity | NextTokenFidelity


def fidelity_for(dense: LoadedModel, texts: list[str], max_length: int | None = None) -> Fidelity:
    """The fidelity measure for the dense model's kind, on `texts` cut to `max_length`
    tokens (None: the kind's default)."""
    kind = NextTokenFidelity if dense.is_causal else EmbeddingFidelity
    return kind(dense, texts) if max_length is None else kind(dense, texts, max_length)
