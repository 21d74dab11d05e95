"""Retrieval on held-out text: the metrics' arithmetic on hand-made embeddings, the queries
they are asked on, and HeldOut judging a tiny model's retrieval over a corpus."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from ppocompress.compress.data.text import Corpus
from ppocompress.compress.measure.quality import HeldOut
from ppocompress.compress.measure.retrieval import (
    QUERIES,
    TOP_K,
    RetrievalQuality,
    RetrievalReference,
    first_relevant_ranks,
    neighbour_recall,
    spread_queries,
)
from ppocompress.compress.runtimes import get_runtime


def corpus(size: int, documents: list[str] | None = None, sources: list[str] | None = None) -> Corpus:
    return Corpus(tuple(f"passage {i}" for i in range(size)), tuple(sources or ["news"] * size),
                  None if documents is None else tuple(documents))


def on_circle(degrees: list[float]) -> torch.Tensor:
    """Unit vectors at these angles: their cosines fall as the angles part."""
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1).float()


def two_clusters(per_cluster: int = TOP_K + 1) -> torch.Tensor:
    """Two tight clusters around orthogonal directions: a passage's TOP_K nearest are
    exactly the other members of its cluster."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.zeros(2 * per_cluster, 8)
    centres[:per_cluster, 0] = centres[per_cluster:, 1] = 1.0
    return centres + 0.05 * torch.randn(2 * per_cluster, 8, generator=generator)


def test_identical_embeddings_keep_every_neighbour_and_the_dense_task_score():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(60, 16, generator=generator)
    reference = RetrievalReference(corpus(60, [f"doc {i // 4}" for i in range(60)]), embeddings)
    scored = reference.score(embeddings.clone())
    assert scored.neighbour_recall_at_10 == 1.0 and scored.retrieval_passages == 60
    assert (scored.task_recall_at_10, scored.task_mrr) == (reference.dense.task_recall_at_10, reference.dense.task_mrr)
    assert reference.dense.neighbour_recall_at_10 is None  # the dense model's neighbours are the reference


def test_swapping_two_passages_between_clusters_loses_known_neighbours():
    """Passages 0 (cluster A) and 11 (cluster B) swap embeddings: each other A query finds 9
    of its 10 dense neighbours (11 has taken 0's place), passage 0 none of its 10."""
    dense = two_clusters()
    swapped = dense.clone()
    swapped[[0, 11]] = dense[[11, 0]]
    reference = RetrievalReference(corpus(22, ["A"] * 11 + ["B"] * 11), dense)
    assert reference.score(swapped).neighbour_recall_at_10 == pytest.approx((20 * 0.9 + 2 * 0.0) / 22)
    assert reference.dense.task_recall_at_10 == 1.0 and reference.dense.task_mrr == 1.0


def test_neighbour_recall_counts_shared_indices_per_row():
    reference = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = torch.tensor([[4, 3, 9, 10], [5, 6, 7, 8]])
    assert neighbour_recall(reference, found) == pytest.approx((0.5 + 1.0) / 2)


def test_mrr_of_a_hand_made_ranking():
    """Passages 0, 3 and 5 share a document; by angle, 0 finds 3 third, 3 finds 0 fourth, 5 finds 3 second."""
    embeddings = on_circle([0, 7, 15, 30, 50, 80])
    documents = ["x", "y", "z", "x", "w", "x"]
    queries = torch.tensor([0, 3, 5])
    assert first_relevant_ranks(embeddings, queries, tuple(documents)).tolist() == [3, 4, 2]
    scored = RetrievalReference(corpus(6, documents), embeddings).dense
    assert scored.task_mrr == pytest.approx((1 / 3 + 1 / 4 + 1 / 2) / 3) and scored.task_recall_at_10 == 1.0


def test_a_document_found_beyond_the_top_k_is_a_miss():
    """Passages 0 and 13 share a document, with 12 passages between them on the circle."""
    documents = ["x"] + [f"other {i}" for i in range(12)] + ["x"]
    scored = RetrievalReference(corpus(14, documents), on_circle([5.0 * i for i in range(14)])).dense
    assert scored.task_recall_at_10 == 0.0 and scored.task_mrr == pytest.approx(1 / 13)


def test_embeddings_that_tell_nothing_apart_rank_badly():
    """All alike: the 4 passages of other documents tie with the query's own, and count as ahead."""
    reference = RetrievalReference(corpus(6, ["x", "x", "y", "y", "z", "z"]), torch.randn(6, 4))
    alike = reference.score(torch.ones(6, 4))
    assert alike.task_mrr == pytest.approx(1 / 5) and alike.task_recall_at_10 == 1.0  # rank 5 of 5 is still in the top 5


def test_without_documents_the_task_is_absent_not_zero():
    scored = RetrievalReference(corpus(30), torch.randn(30, 8)).score(torch.randn(30, 8))
    assert scored.task_recall_at_10 is None and scored.task_mrr is None
    assert 0.0 <= scored.neighbour_recall_at_10 <= 1.0 and scored.retrieval_passages == 30


def test_a_corpus_of_few_passages_compares_all_the_others():
    reference = RetrievalReference(corpus(4), torch.randn(4, 8))
    assert reference.k == 3 and reference.score(torch.randn(4, 8)).neighbour_recall_at_10 == 1.0
    with pytest.raises(ValueError):
        RetrievalReference(corpus(1), torch.randn(1, 8))


def test_queries_are_balanced_between_sources_fixed_and_answerable():
    sources = ["news"] * 1000 + ["reviews"] * 50 + ["wikipedia"] * 400
    documents = [f"news {i // 5}" for i in range(1000)] + [f"review {i}" for i in range(50)] + ["berlin"] * 400
    spread = corpus(1450, documents, sources)
    chosen = spread_queries(spread, list(range(1450)), QUERIES)
    assert Counter(sources[row] for row in chosen.tolist()) == {"news": 125, "reviews": 50, "wikipedia": 125}
    assert torch.equal(chosen, spread_queries(spread, list(range(1450)), QUERIES))
    reference = RetrievalReference(spread, torch.randn(1450, 8))
    assert len(reference.queries) == QUERIES and len(reference.task_queries) == QUERIES
    assert not {sources[row] for row in reference.task_queries.tolist()} & {"reviews"}  # one-sentence reviews: no answer


def test_held_out_judges_retrieval_over_the_whole_corpus(tiny_model, tmp_path):
    dense = tiny_model("bert")
    passages = [f"sentence {i} tells of {w} in the year {1900 + i}" for i, w in
                enumerate(["rivers", "kings", "music", "trade", "storms", "sport"] * 5)]
    corpus_of_30 = Corpus(tuple(passages), ("news",) * 30, tuple(f"doc {i % 6}" for i in range(30)))
    held_out = HeldOut(dense, passages[:8], corpus_of_30)
    runtime = get_runtime("torch")
    session = runtime.session(runtime.export(dense, tmp_path / "dense", []))
    judged = held_out.judge(session)
    assert judged.cosine_heldout == pytest.approx(1.0, abs=1e-5) and judged.retrieval_passages == 30
    assert judged.neighbour_recall_at_10 > 0.9  # the same model: only near-ties may come back in another order
    assert judged.task_mrr == pytest.approx(held_out.retrieval.dense.task_mrr, abs=0.05)
    assert HeldOut(dense, passages[:8]).judge(session).neighbour_recall_at_10 is None


def test_a_model_judged_under_a_name_is_judged_once_and_others_each_time(tiny_model, tmp_path, monkeypatch):
    dense = tiny_model("bert")
    held_out = HeldOut(dense, [f"passage {i} on {w}" for i, w in enumerate(["rivers", "kings", "music", "trade"])])
    runtime = get_runtime("torch")
    session = runtime.session(runtime.export(dense, tmp_path / "dense", []))
    first = held_out.judge(session, same="dense")
    calls = []
    monkeypatch.setattr(held_out, "_judge", lambda session: calls.append(session) or first)
    assert held_out.judge("another export of it", same="dense") is first and calls == []
    held_out.judge(session, same="dense int8")
    held_out.judge(session)
    held_out.judge(session)
    assert calls == [session] * 3


def test_a_causal_lm_is_judged_on_no_corpus(tiny_model):
    held_out = HeldOut(tiny_model("gpt2"), ["one passage of text here", "and another one of them"], corpus(30))
    assert held_out.retrieval is None and RetrievalQuality() == RetrievalQuality(neighbour_recall_at_10=None)
