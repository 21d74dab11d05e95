"""Retrieval on held-out text, which is what a user of sentence embeddings sees: does a
model bring back the dense model's nearest neighbours, and does a sentence still find
another sentence of its own document?

Both search a `Corpus` (data/text.py: the whole evaluation split) by cosine, from queries
that are passages of the corpus, chosen once and balanced between its sources; a query
never retrieves itself. Only embeddings come in: the models are run elsewhere (quality.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ppocompress.compress.data.text import Corpus, balanced

TOP_K = 10  # neighbours compared, and the rank within which a query must find its document
QUERIES = 300  # queries of each kind (neighbours, task) taken from the corpus


@dataclass(kw_only=True)
class RetrievalQuality:
    """A model's retrieval over a corpus of `retrieval_passages` passages, TOP_K at a time
    (all the others, in a corpus of TOP_K passages or fewer). None where not measured: a
    causal LM, no corpus given, or (the task's) a corpus whose documents are unknown."""

    # Of the dense model's TOP_K nearest neighbours of a query, the share that the model's
    # TOP_K also holds, averaged over the queries (1 for the dense model itself).
    neighbour_recall_at_10: float | None = None
    # The labelled task, over the queries whose document has another passage in the corpus:
    # the share with one among their TOP_K, and the mean reciprocal rank of the first one.
    task_recall_at_10: float | None = None
    task_mrr: float | None = None
    retrieval_passages: int | None = None


def similarities(embeddings: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Cosine of each query's passage (a row index) to every passage, [queries, passages];
    -inf to itself, so that a query never retrieves itself."""
    unit = F.normalize(embeddings.detach().float().cpu(), p=2, dim=1)
    sims = unit[queries] @ unit.T
    sims[torch.arange(len(queries)), queries] = -torch.inf
    return sims


def neighbours(embeddings: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """The k nearest passages of each query, [queries, k] row indices."""
    return similarities(embeddings, queries).topk(k, dim=1).indices


def neighbour_recall(reference: torch.Tensor, found: torch.Tensor) -> float:
    """The share of each row of `reference` ([queries, k] neighbours) that the same row of
    `found` holds, averaged over the rows."""
    hits = (found.unsqueeze(2) == reference.unsqueeze(1)).any(2).sum(1)
    return float((hits.float() / reference.shape[1]).mean())


def first_relevant_ranks(embeddings: torch.Tensor, queries: torch.Tensor, documents: tuple[str, ...]) -> torch.Tensor:
    """For each query, the rank (from 1) of the nearest other passage of its own document,
    which must exist. A passage of another document as near counts as ahead of it, so that
    embeddings that tell nothing apart (all alike) rank badly."""
    sims = similarities(embeddings, queries)
    ids = {name: i for i, name in enumerate(dict.fromkeys(documents))}
    document = torch.tensor([ids[name] for name in documents])
    relevant = document[queries].unsqueeze(1) == document.unsqueeze(0)
    relevant[torch.arange(len(queries)), queries] = False
    best = sims.masked_fill(~relevant, -torch.inf).max(1).values
    return 1 + ((sims >= best.unsqueeze(1)) & ~relevant).sum(1)


def spread_queries(corpus: Corpus, rows: list[int], count: int) -> torch.Tensor:
    """`count` of the corpus' `rows` (all, if fewer), balanced between its sources and
    spread over each (text.balanced), as sorted row indices."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(corpus.sources[row], []).append(corpus.passages[row])
    index = {passage: row for row, passage in enumerate(corpus.passages)}
    return torch.tensor(sorted(index[passage] for passage in balanced(list(groups.values()), count)), dtype=torch.long)


class RetrievalReference:
    """The dense model's side of retrieval over a corpus, computed once from its
    embeddings: the queries, their nearest neighbours, and its own task score (`dense`,
    the one a compressed model's should come close to). `score` judges another model's
    embeddings of the same corpus."""

    def __init__(self, corpus: Corpus, embeddings: torch.Tensor):
        passages = len(corpus.passages)
        if passages < 2 or len(embeddings) != passages:
            raise ValueError(f"need a corpus of at least 2 passages and an embedding each, got {passages} and {len(embeddings)}")
        self.corpus, self.k = corpus, min(TOP_K, passages - 1)
        self.queries = spread_queries(corpus, list(range(passages)), QUERIES)
        self.neighbours = neighbours(embeddings, self.queries, self.k)
        self.task_queries = None
        if corpus.documents is not None:
            sizes = Counter(corpus.documents)
            answerable = [row for row, name in enumerate(corpus.documents) if sizes[name] > 1]
            self.task_queries = spread_queries(corpus, answerable, QUERIES) if answerable else None
        self.dense = self._task(embeddings)

    def score(self, embeddings: torch.Tensor) -> RetrievalQuality:
        """Another model's retrieval, from its embeddings of the corpus (in its order)."""
        if len(embeddings) != len(self.corpus.passages):
            raise ValueError(f"need an embedding of each of the {len(self.corpus.passages)} passages, got {len(embeddings)}")
        recall = neighbour_recall(self.neighbours, neighbours(embeddings, self.queries, self.k))
        return replace(self._task(embeddings), neighbour_recall_at_10=recall)

    def _task(self, embeddings: torch.Tensor) -> RetrievalQuality:
        """The labelled task's scores (None without documents); neighbour recall left None."""
        if self.task_queries is None:
            return RetrievalQuality(retrieval_passages=len(self.corpus.passages))
        ranks = first_relevant_ranks(embeddings, self.task_queries, self.corpus.documents).double()
        return RetrievalQuality(task_recall_at_10=float((ranks <= self.k).double().mean()), task_mrr=float((1 / ranks).mean()),
                                retrieval_passages=len(self.corpus.passages))
