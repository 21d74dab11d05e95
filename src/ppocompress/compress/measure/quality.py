"""How much a compressed model still behaves like the dense one.

Encoders (any Hugging Face model whose output has .last_hidden_state) are compared on
sentence embeddings. Causal language models (output .logits) are compared on
perplexity and on the KL divergence of their next-token distributions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ppocompress.compress.data.calibration import BATCH_SIZE, MAX_LENGTH, by_length, ensure_pad_token
from ppocompress.compress.data.text import Corpus, lee_documents, lee_similarities
from ppocompress.compress.measure.retrieval import RetrievalQuality, RetrievalReference

LEE_MAX_LENGTH = 256  # the longest lee.cor document is 154 MiniLM tokens, so nothing is cut
HELD_OUT_MAX_LENGTH = 128  # tokens of a held-out passage that quality is measured on
# A causal LM is judged on fewer held-out passages: each costs a forward pass with the full
# vocabulary per token, and the dense log-probabilities are kept for all of them.
CAUSAL_HELD_OUT = 128


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _in_input_order(rows: list[torch.Tensor], order: list[int]) -> torch.Tensor:
    """Rows computed in `order`, put back in the order of the texts."""
    stacked = torch.cat(rows)
    restored = torch.empty_like(stacked)
    restored[torch.tensor(order)] = stacked
    return restored


def _batches(texts: list[str], batch_size: int) -> Iterator[list[str]]:
    for start in range(0, len(texts), batch_size):
        yield texts[start : start + batch_size]


def embed(model: nn.Module, tokenizer, texts: list[str], batch_size: int = BATCH_SIZE,
          max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Sentence embeddings, [len(texts), hidden] float32 on the CPU, each row of length 1.

    Token states are averaged over the attention mask and then L2-normalised. This is
    what sentence-transformers does for all-MiniLM-L6-v2, so the dense model reproduces
    its published embeddings.
    """
    if not texts:
        raise ValueError("embed() needs at least one text")
    model.eval()
    device = _device(model)
    max_length = min(max_length, usable_positions(model))
    order = by_length(texts)
    rows = []
    with torch.inference_mode():
        for batch in _batches([texts[i] for i in order], batch_size):
            enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state.float()
            rows.append(mean_pooled(hidden, enc["attention_mask"]).cpu())
    return _in_input_order(rows, order)


def embed_session(session, tokenizer, texts: list[str], batch_size: int = BATCH_SIZE,
                  max_length: int = MAX_LENGTH) -> torch.Tensor:
    """embed() for a model loaded by a runtime (runtimes.Session): the model as shipped."""
    if not texts:
        raise ValueError("embed_session() needs at least one text")
    order = by_length(texts)
    rows = []
    for batch in _batches([texts[i] for i in order], batch_size):
        enc = tokenizer(batch, return_tensors="np", padding=True, truncation=True, max_length=max_length)
        hidden = torch.from_numpy(np.asarray(session(enc["input_ids"], enc["attention_mask"])))
        rows.append(mean_pooled(hidden.float(), torch.from_numpy(enc["attention_mask"])))
    return _in_input_order(rows, order)


def judge_session(session, dense_model: nn.Module, tokenizer, texts: list[str], reference: torch.Tensor) -> dict[str, float]:
    """Fidelity (mean and min cosine, pair-similarity Spearman) to the dense `reference`
    embeddings of `texts`, and the Lee Pearson correlation, of a model as its runtime runs
    it; inputs capped to the dense model's positions as embed() caps them."""
    positions = usable_positions(dense_model)
    served = embed_session(session, tokenizer, texts, max_length=min(HELD_OUT_MAX_LENGTH, positions))
    fidelity = embedding_fidelity(reference, served)
    lee = lee_correlation_of(embed_session(session, tokenizer, lee_documents(), max_length=min(LEE_MAX_LENGTH, positions)))
    return {**fidelity, "lee_pearson": lee["pearson"]}


def retrieval_reference(dense_model: nn.Module, tokenizer, corpus: Corpus) -> RetrievalReference:
    """The dense model's retrieval over `corpus`, its embeddings computed once (as held-out
    cosine's reference is: HELD_OUT_MAX_LENGTH tokens)."""
    return RetrievalReference(corpus, embed(dense_model, tokenizer, list(corpus.passages), max_length=HELD_OUT_MAX_LENGTH))


def judge_retrieval(session, dense_model: nn.Module, tokenizer, reference: RetrievalReference) -> RetrievalQuality:
    """The retrieval of a model as its runtime runs it: one pass over the corpus, inputs
    capped as embed() caps the dense model's."""
    max_length = min(HELD_OUT_MAX_LENGTH, usable_positions(dense_model))
    return reference.score(embed_session(session, tokenizer, list(reference.corpus.passages), max_length=max_length))


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Token states averaged over the mask, then L2-normalised (sentence-transformers' pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), p=2, dim=1)


def usable_positions(model: nn.Module) -> int:
    """The longest input the model's position table allows (RoBERTa and MPNet reserve padding_idx + 1)."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or 1_000_000
    if config.model_type in ("roberta", "mpnet"):
        limit -= (config.pad_token_id or 0) + 1
    return limit


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, with tied values given their average rank (as scipy.stats.rankdata does)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts_group = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = average[np.cumsum(starts_group) - 1]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation. 0.0 when either side is constant: a constant carries no ranking to agree with."""
    a = a - a.mean()
    b = b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation, computed in numpy so that scipy is not needed."""
    return _pearson(_ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64)))


def _upper_triangle(embeddings: torch.Tensor) -> np.ndarray:
    sims = (embeddings @ embeddings.T).double().numpy()
    return sims[np.triu_indices(len(sims), 1)]


def embedding_fidelity(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """How closely candidate embeddings match reference embeddings of the same texts.

    mean_cosine and min_cosine compare each text's two embeddings. pairsim_spearman asks
    whether the candidate still ranks pairs of texts by similarity as the reference
    does, which is what retrieval and clustering depend on.
    """
    if reference.shape != candidate.shape or reference.dim() != 2:
        raise ValueError(f"need two [n, dim] tensors of the same shape, got {tuple(reference.shape)} "
                         f"and {tuple(candidate.shape)}")
    if len(reference) < 3:
        raise ValueError("embedding_fidelity needs at least 3 texts, so that there are pairs of pairs to rank")
    reference = F.normalize(reference.detach().float().cpu(), p=2, dim=1)
    candidate = F.normalize(candidate.detach().float().cpu(), p=2, dim=1)
    cosines = (reference * candidate).sum(1)
    return {
        "mean_cosine": float(cosines.mean()),
        "min_cosine": float(cosines.min()),
        "pairsim_spearman": spearman(_upper_triangle(reference), _upper_triangle(candidate)),
    }


def lee_correlation(model: nn.Module, tokenizer) -> dict[str, float]:
    """Agreement of the model's cosine similarities with human ratings of the 50 lee.cor articles.

    This follows gensim's test_lee.py. The 1225 upper-triangle pairs are compared with
    the human ratings (the dense all-MiniLM-L6-v2's values are checked in
    tests/test_compress_quality.py).
    """
    return lee_correlation_of(embed(model, tokenizer, lee_documents(), max_length=LEE_MAX_LENGTH))


def lee_correlation_of(embeddings: torch.Tensor) -> dict[str, float]:
    """lee_correlation from embeddings of lee_documents() (max_length LEE_MAX_LENGTH), however computed."""
    model_pairs = _upper_triangle(embeddings)
    human_pairs = lee_similarities()[np.triu_indices(50, 1)]
    return {"pearson": _pearson(model_pairs, human_pairs), "spearman": spearman(model_pairs, human_pairs)}


@dataclass
class NextTokenComparison:
    """A causal LM against a reference on the same texts, over the real (non-pad) positions."""

    kl: float  # mean KL(reference || model) of the next-token distributions, in nats
    top1_agreement: float  # fraction of positions whose most likely next token is the same
    # The model's: exp of the mean negative log-likelihood per predicted token, every token
    # weighted alike; padding and each text's first token (nothing predicts it) not counted.
    perplexity: float


class NextTokenReference:
    """A reference causal LM's next-token log-probabilities on `texts`, computed once, to
    compare other models with (KL, top-1 agreement) at every real position.

    Unlike perplexity, KL compares a compressed model with the dense one at every token,
    so it also notices changes where both models would be equally wrong. `dtype` is how
    the log-probabilities are kept ([tokens, vocabulary]: float16 halves what a large
    vocabulary takes); a compared model's are rounded the same way, so identical models
    compare at KL 0 exactly.
    """

    def __init__(self, model: nn.Module, tokenizer, texts: list[str], max_length: int = MAX_LENGTH, batch_size: int = 8,
                 dtype: torch.dtype = torch.float32):
        if not texts:
            raise ValueError("need at least one text")
        ensure_pad_token(tokenizer)
        ordered = [texts[i] for i in by_length(texts)]  # sums: order does not matter
        self.batches = [tokenizer(ordered[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt", padding_side="right") for start in range(0, len(ordered), batch_size)]
        self.dtype = dtype
        self.log_probs = [self._log_probs(model, batch) for batch in self.batches]
        self.tokens = sum(len(log_probs) for log_probs in self.log_probs)
        if self.tokens == 0:
            raise ValueError("comparing next tokens needs texts of at least one token")

    def _log_probs(self, model, batch) -> torch.Tensor:
        """Next-token log-probabilities at the real positions, [tokens, vocabulary], in
        self.dtype, of a PyTorch model or a runtime's session (ids and mask in, logits out)."""
        if isinstance(model, nn.Module):
            model.eval()
            device = _device(model)
            with torch.inference_mode():
                logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                               use_cache=False).logits.cpu()
        else:
            logits = torch.from_numpy(np.asarray(model(batch["input_ids"].numpy(), batch["attention_mask"].numpy())))
        return F.log_softmax(logits[batch["attention_mask"].bool()].float(), dim=-1).to(self.dtype)

    def compare(self, model) -> NextTokenComparison:
        """KL to the reference, top-1 agreement and perplexity of a model or session."""
        kl, agree, nll, predicted = 0.0, 0, 0.0, 0
        for batch, reference in zip(self.batches, self.log_probs):
            log_probs = self._log_probs(model, batch).float()
            reference = reference.float()
            kl += float((reference.exp() * (reference - log_probs)).sum(-1).double().sum())
            agree += int((reference.argmax(-1) == log_probs.argmax(-1)).sum())
            # Perplexity: position t predicts token t + 1 of the same text, where there is one.
            mask = batch["attention_mask"].bool()
            follows = torch.zeros_like(mask)
            follows[:, :-1] = mask[:, 1:]
            targets = batch["input_ids"][:, 1:][mask[:, 1:]]
            rows = log_probs[follows[mask]]
            nll -= float(rows.gather(-1, targets.unsqueeze(-1)).double().sum())
            predicted += len(targets)
        if predicted == 0:
            raise ValueError("perplexity needs texts of at least two tokens")
        return NextTokenComparison(max(kl / self.tokens, 0.0), agree / self.tokens, math.exp(nll / predicted))


def greedy_generations(session, tokenizer, prompts: list[str], new_tokens: int = 40) -> list[str]:
    """Each prompt continued by greedy decoding with the KV cache on a generating runtime's
    session (greedy_tokens): the text a user would see, to judge coherence that no metric
    captures."""
    outputs = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="np")["input_ids"]
        outputs.append(tokenizer.decode(session.greedy_tokens(ids, new_tokens), skip_special_tokens=True))
    return outputs


@dataclass(kw_only=True)
class HeldOutQuality(RetrievalQuality):
    """How a model as its runtime serves it compares with dense PyTorch fp32 on held-out
    text: the encoder fields (retrieval's among them, when judged over a corpus) or the
    causal-LM fields are set."""

    # Encoders: sentence embeddings.
    cosine_heldout: float | None = None  # mean cosine
    cosine_heldout_min: float | None = None
    lee_pearson: float | None = None
    # Causal LMs: next-token distributions.
    kl_heldout: float | None = None
    top1_agreement: float | None = None
    perplexity_heldout: float | None = None

    @property
    def fidelity(self) -> float:
        """What the search maximises, on held-out text: cosine, or exp(-KL) for causal LMs."""
        return self.cosine_heldout if self.cosine_heldout is not None else math.exp(-self.kl_heldout)


class HeldOut:
    """Held-out quality of a model as its runtime serves it, against dense PyTorch fp32:
    embeddings (cosine, Lee correlation, and retrieval over `corpus` when one is given) for
    encoders, next-token distributions (KL, top-1 agreement, perplexity) for causal LMs;
    the dense outputs computed once, and a model judged under a name once (`judge`'s same)."""

    def __init__(self, dense, texts: list[str], corpus: Corpus | None = None):
        """dense: a LoadedModel; texts: the cosines'; corpus: retrieval's (TextSplits.corpus)."""
        self.dense, self.texts, self.retrieval = dense, texts, None
        self._judged: dict[str, HeldOutQuality] = {}
        if dense.is_causal:
            self.texts = texts[:CAUSAL_HELD_OUT]
            self.reference = NextTokenReference(dense.model, dense.tokenizer, self.texts)
            return
        self.reference = embed(dense.model, dense.tokenizer, texts, max_length=HELD_OUT_MAX_LENGTH)
        if corpus is not None:
            self.retrieval = retrieval_reference(dense.model, dense.tokenizer, corpus)

    def judge(self, session, same: str | None = None) -> HeldOutQuality:
        """The quality of a runtime session's model; same: a name every model judged under
        it shares (the dense model exported again for the same runtime), judged only once."""
        if same is None:
            return self._judge(session)
        if same not in self._judged:
            self._judged[same] = self._judge(session)
        return self._judged[same]

    def _judge(self, session) -> HeldOutQuality:
        if self.dense.is_causal:
            compared = self.reference.compare(session)
            return HeldOutQuality(kl_heldout=compared.kl, top1_agreement=compared.top1_agreement,
                                  perplexity_heldout=compared.perplexity)
        judged = judge_session(session, self.dense.model, self.dense.tokenizer, self.texts, self.reference)
        retrieval = (RetrievalQuality() if self.retrieval is None
                     else judge_retrieval(session, self.dense.model, self.dense.tokenizer, self.retrieval))
        return HeldOutQuality(cosine_heldout=judged["mean_cosine"], cosine_heldout_min=judged["min_cosine"],
                              lee_pearson=judged["lee_pearson"], **vars(retrieval))

    def dense_lee_pearson(self) -> float | None:
        return None if self.dense.is_causal else lee_correlation(self.dense.model, self.dense.tokenizer)["pearson"]
