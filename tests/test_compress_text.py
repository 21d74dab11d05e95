"""Tests of the English text sources, the default split and reading a user's text."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ppocompress.compress.data import text
from ppocompress.errors import UserError


def _one_line_error(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_gensim_data_dir_is_found_without_importing_gensim(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "gensim" or m.startswith("gensim.")]:
        monkeypatch.delitem(sys.modules, name)
    directory = text.gensim_data_dir()
    assert (directory / "lee.cor").is_file()
    assert "gensim" not in sys.modules


def test_gensim_data_dir_without_gensim_says_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real_find_spec(name, *a))
    with pytest.raises(UserError) as excinfo:
        text.gensim_data_dir()
    assert "pip install gensim" in _one_line_error(excinfo)


def test_lee_files_have_the_documented_sizes() -> None:
    assert len(text.lee_background_documents()) == 300
    assert len(text.lee_documents()) == 50
    sims = text.lee_similarities()
    assert sims.shape == (50, 50)
    assert np.allclose(np.diag(sims), 1.0)
    assert np.all(sims[np.tril_indices(50, -1)] == 0)


def test_lee_documents_decode_the_latin1_pound_sign() -> None:
    assert any("£" in doc for doc in text.lee_documents())


def test_movie_review_sentences_have_no_label_prefix() -> None:
    sentences = text.movie_review_sentences()
    assert len(sentences) == 200
    assert not any("__label__" in s for s in sentences)
    assert sentences[0].startswith("simplistic , silly and tedious")


def test_imdb_reviews_and_wikipedia_paragraphs_lose_their_markup() -> None:
    reviews = text.imdb_reviews()
    assert len(reviews) == 10 and not any(r.startswith("_*") for r in reviews)
    for number in (1, 2):
        paragraphs = text.wikipedia_paragraphs(number)
        assert paragraphs and not any("[1" in p for p in paragraphs)


def test_split_sentences_splits_on_end_punctuation_and_drops_short_ones() -> None:
    passage = ("The cat sat on the mat today.  Short one!   Is this   a question with words? Yes.\n"
               "A new line starts a sentence here.")
    assert text.split_sentences(passage) == [
        "The cat sat on the mat today.",
        "Is this a question with words?",
        "A new line starts a sentence here.",
    ]


def test_default_splits_are_non_overlapping_deterministic_with_documented_counts() -> None:
    first, second = text.default_splits(), text.default_splits()
    assert first == second
    assert (len(first.calibration), len(first.validation), len(first.evaluation)) == (15585, 205, 5371)
    lists = (first.calibration, first.validation, first.evaluation)
    for one in lists:
        assert len(set(one)) == len(one)
    assert not set(first.calibration) & set(first.validation)
    assert not (set(first.calibration) | set(first.validation)) & set(first.evaluation)


def test_default_splits_keep_the_lee_benchmark_out() -> None:
    splits = text.default_splits()
    lee_sentences = {s for doc in text.lee_documents() for s in text.split_sentences(doc)}
    assert not lee_sentences & set(splits.calibration + splits.validation + splits.evaluation)


def test_default_splits_hold_out_a_whole_source_for_validation() -> None:
    """No fit sees the reviews: choices made on them are made on a domain the fit never saw."""
    splits = text.default_splits()
    assert {splits.sources[p] for p in splits.validation} == {"reviews"}
    assert {splits.sources[p] for p in splits.calibration} == {"news", "wikipedia"}
    assert set(splits.by_source(splits.evaluation)) == {"news", "wikipedia", "reviews"}
    held_out = text.split_sentences(text.lee_background_documents()[250])
    assert held_out and set(held_out) <= set(splits.evaluation)
    assert text.movie_review_sentences()[0] in splits.validation
    assert text.movie_review_sentences()[199] in splits.evaluation


def test_wikipedia_articles_are_prose_without_markup() -> None:
    articles = text.wikipedia_articles()
    assert len(articles) == 94
    paragraphs = [p for article in articles for p in article]
    assert not any(ch in p for p in paragraphs for ch in "|{}[]=<>")
    assert not any("''" in p for p in paragraphs)
    assert articles[0][0].startswith("Anarchism is a political philosophy")


def test_subset_balances_every_prefix_between_sources() -> None:
    splits = text.default_splits()
    chosen = text.subset(splits, 100, 300)
    sources = [splits.sources[p] for p in chosen.calibration]
    assert len(sources) == 100 and sources[:10].count("news") == 5 and sources.count("news") == 50
    held_out = {name: len(texts) for name, texts in splits.by_source(chosen.evaluation).items()}
    assert held_out == {"news": 100, "wikipedia": 100, "reviews": 100}
    assert chosen.validation == splits.validation


def _held_out_name(name: str) -> bool:
    """Whether a document's name is one of the module docstring's held-out parts."""
    kind, number = name.rsplit(" ", 1)
    if number == "Berlin":
        return kind == "wikipedia"
    index = int(number)
    return {"news": index >= 200, "wikipedia": index % 5 == 4, "review": index % 100 >= 50, "imdb": index >= 7}[kind]


def test_every_evaluation_passage_has_one_document_of_the_held_out_parts() -> None:
    splits = text.default_splits()
    corpus = splits.corpus
    assert corpus.passages == tuple(splits.evaluation) and len(corpus.documents) == len(corpus.passages)
    assert corpus.sources == tuple(splits.sources[p] for p in splits.evaluation)
    held_out = {name: set(passages) for by_name in text.held_out_documents().values() for name, passages in by_name.items()}
    assert all(_held_out_name(name) for name in held_out) and len(held_out) == 100 + 18 + 1 + 100 + 3
    assert all(passage in held_out[name] for passage, name in zip(corpus.passages, corpus.documents))
    sizes = Counter(corpus.documents)
    repeated = set(text.split_sentences(text.lee_background_documents()[271]))  # article 271 repeats 263: its passages are 263's
    assert repeated and "news 271" not in sizes
    assert repeated == {passage for passage, name in zip(corpus.passages, corpus.documents) if name == "news 263"}
    answerable = [name for name in sizes if sizes[name] > 1]  # documents a query can find another passage of
    assert (len(answerable), sum(sizes[name] for name in answerable)) == (119, 5271) and sizes["wikipedia Berlin"] > 100


def test_subset_keeps_the_whole_corpus_and_a_users_has_no_documents() -> None:
    splits = text.default_splits()
    assert text.subset(splits, 100, 300).corpus == splits.corpus
    users = text.splits_from_texts([f"passage number {i}" for i in range(20)])
    assert users.corpus == text.Corpus(tuple(users.evaluation), (text.USER_SOURCE,) * len(users.evaluation), None)
    assert text.subset(users, 5, 2).corpus == users.corpus


def test_balanced_gives_what_a_small_group_lacks_to_the_others() -> None:
    groups = [[f"a{i}" for i in range(3)], [f"b{i}" for i in range(100)], [f"c{i}" for i in range(100)]]
    picked = text.balanced(groups, 21)
    assert [sum(p.startswith(g) for p in picked) for g in "abc"] == [3, 9, 9]
    assert text.balanced(groups, 1000) == text.balanced(groups, 203) and len(text.balanced(groups, 1000)) == 203


def test_splits_from_texts_interleaves_deterministically() -> None:
    passages = [f"passage number {i}" for i in range(10)]
    splits = text.splits_from_texts(passages, eval_fraction=0.3)
    assert splits.evaluation == ["passage number 1", "passage number 5", "passage number 8"]
    assert len(splits.validation) == 1 and not set(splits.validation) & set(splits.calibration)
    assert sorted(splits.calibration + splits.validation + splits.evaluation) == sorted(passages)
    assert splits == text.splits_from_texts(passages, eval_fraction=0.3)


def test_splits_from_texts_drops_duplicates_so_splits_cannot_overlap() -> None:
    passages = [f"line {i % 12}" for i in range(40)]
    splits = text.splits_from_texts(passages)
    assert not set(splits.calibration) & set(splits.evaluation)
    assert len(splits.calibration) + len(splits.validation) + len(splits.evaluation) == 12


def test_splits_from_texts_rejects_too_few_passages_and_bad_fractions() -> None:
    with pytest.raises(UserError) as excinfo:
        text.splits_from_texts(["one passage"] * 20)
    assert "at least 10" in _one_line_error(excinfo)
    with pytest.raises(UserError) as excinfo:
        text.splits_from_texts([f"p{i}" for i in range(20)], eval_fraction=1.0)
    assert "between 0 and 1" in _one_line_error(excinfo)


def test_read_text_file_returns_stripped_non_empty_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("  first passage  \n\n\tsecond — passage\n   \n", encoding="utf-8")
    assert text.read_text_file(path) == ["first passage", "second — passage"]


def test_read_text_file_falls_back_to_latin1(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes("It cost £5 in a café.\n".encode("latin-1"))
    assert text.read_text_file(path) == ["It cost £5 in a café."]


def test_read_text_file_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as excinfo:
        text.read_text_file(tmp_path / "nope.txt")
    assert "does not exist" in _one_line_error(excinfo)


def test_read_text_file_directory_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as excinfo:
        text.read_text_file(tmp_path)
    assert "not a file" in _one_line_error(excinfo)


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"])
def test_read_text_file_empty_file_is_a_user_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(UserError) as excinfo:
        text.read_text_file(path)
    assert "empty" in _one_line_error(excinfo)


@pytest.mark.parametrize(
    "content",
    [b"hello\x00world\n", bytes(range(1, 256)) * 4],  # a NUL byte; bytes that are neither UTF-8 nor printable latin-1
)
def test_read_text_file_binary_file_is_a_user_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    with pytest.raises(UserError) as excinfo:
        text.read_text_file(path)
    assert "binary" in _one_line_error(excinfo)


def test_hf_dataset_texts_without_datasets_package_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(UserError) as excinfo:
        text.hf_dataset_texts("wikitext")
    message = _one_line_error(excinfo)
    assert "pip install datasets" in message and "--text FILE" in message


def test_hf_dataset_texts_load_failure_says_offline_and_suggests_text_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)\nsecond line")

    fake = types.ModuleType("datasets")
    fake.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(UserError) as excinfo:
        text.hf_dataset_texts("wikitext", split="test")
    message = _one_line_error(excinfo)
    assert "could not reach dataset wikitext" in message and "offline" in message and "--text FILE" in message
