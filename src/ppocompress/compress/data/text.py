"""English text for calibrating, validating and evaluating compressed models.

The default text comes from files that the `gensim` wheel ships under
gensim/test/test_data, found without importing gensim, which is slow to import (only the
Wikipedia dump's parser is imported, when that source is read). Only natural English
text is used: no stemmed, tokenised-keyword or non-English files.

Three sources, and three roles (`default_splits`; fixed, no random numbers, no passage
in two lists):

| source                                   | calibration (fits)   | validation (choices) | evaluation (held out)   |
|------------------------------------------|----------------------|----------------------|-------------------------|
| news: lee_background.cor (300 articles)  | articles 0-199       |                      | articles 200-299        |
| wikipedia: enwiki-...-shortened.bz2      | articles not 4 mod 5 |                      | articles 4 mod 5        |
|   (94 articles of 200+ words of prose)   |                      |                      |                         |
| wikipedia: para2para_text1/2.txt         | New York (text1)     |                      | Berlin (text2)          |
| reviews: pang_lee_polarity.cor (200)     |                      | neg 0-49, pos 0-49   | neg 50-99, pos 50-99    |
| reviews: alldata-id-10.txt (10 IMDB)     |                      | reviews 0-6          | reviews 7-9             |
| sentences (tests/test_compress_text.py)  | 15,585               | 205                  | 5,371                   |

- calibration is what every fit sees: the search's plan scores, importance, least
  squares, distillation and int8 calibration. Its order interleaves the sources, so
  every prefix (a search takes the first --calibration-texts) is balanced between them.
- validation is a whole source that no fit sees (reviews: lowercase, informal), so a
  choice made on it (the least-squares ridge, when distillation stops) is made on a
  domain the fit never saw.
- evaluation is for the final report only, and is reported per source. The whole of it
  is also the retrieval corpus (`Corpus`, which `subset` keeps whole), each passage with
  its document (`held_out_documents`): a news article, a Wikipedia article (Berlin's
  paragraphs are one), a movie-review sentence or an IMDB review.

Articles and reviews are split into sentences (`split_sentences`); movie-review lines
are already single sentences. Each list keeps one copy of a repeated sentence
(lee_background.cor has only 293 distinct articles among its 300 lines).
lee.cor (50 documents, with human similarity judgements) is in no list. It is the
separate benchmark that `ppocompress.compress.measure.quality.lee_correlation` uses.
"""

from __future__ import annotations

import bz2
import functools
import importlib.util
import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ppocompress.errors import UserError, first_line

MIN_SENTENCE_WORDS = 5
CALIBRATION_PASSAGES = 1024  # what a search, importance and least squares fit on, by default
EVALUATION_PASSAGES = 512  # held out for the report, by default
MIN_USER_PASSAGES = 10

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CITATION = re.compile(r"\[\d+\]")  # Wikipedia footnote markers such as "[17]"
_REVIEW_ID = re.compile(r"^_\*\d+\s+")  # the "_*3 " prefix of alldata-id-10.txt lines
_LABEL = re.compile(r"^__label__\S+\s+")  # the fastText label of pang_lee_polarity.cor lines


def gensim_data_dir() -> Path:
    """gensim's test_data folder, found without importing gensim (see the module docstring)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default text comes from the gensim package, which is not installed; pip install gensim")
    directory = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"
    if not (directory / "lee_background.cor").is_file():
        raise UserError(
            f"gensim is installed but has no test data in {directory}; reinstall it: pip install --force-reinstall gensim"
        )
    return directory


def _lines(name: str) -> list[str]:
    """Non-empty lines of a gensim data file. Some are not UTF-8 (lee.cor has a latin-1 £), so all are read as latin-1."""
    text = (gensim_data_dir() / name).read_bytes().decode("latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, split after . ! or ? followed by whitespace, with whitespace collapsed.

    Sentences shorter than MIN_SENTENCE_WORDS words are dropped. Fragments such as
    "." or "Mr." carry almost no meaning to compare embeddings on.
    """
    sentences = (" ".join(part.split()) for part in _SENTENCE_END.split(text))
    return [s for s in sentences if len(s.split()) >= MIN_SENTENCE_WORDS]


def lee_background_documents() -> list[str]:
    """The 300 news articles of lee_background.cor (Lee et al. 2005 background corpus)."""
    return _lines("lee_background.cor")


def lee_documents() -> list[str]:
    """The 50 news articles of lee.cor, the ones that humans rated for similarity."""
    return _lines("lee.cor")


def lee_similarities() -> np.ndarray:
    """Human similarity ratings of the 50 lee.cor articles, 50x50, as in the file.

    Only the upper triangle is filled in: the diagonal is 1 and the lower triangle is 0.
    """
    return np.loadtxt(gensim_data_dir() / "similarities0-1.txt")


def movie_review_sentences() -> list[str]:
    """The 200 lowercased movie-review sentences of pang_lee_polarity.cor: 100 negative, then 100 positive."""
    return [_LABEL.sub("", line) for line in _lines("pang_lee_polarity.cor")]


def imdb_reviews() -> list[str]:
    """The 10 long, lowercased IMDB reviews of alldata-id-10.txt."""
    return [_REVIEW_ID.sub("", line) for line in _lines("alldata-id-10.txt")]


def wikipedia_paragraphs(number: int) -> list[str]:
    """Wikipedia paragraphs about New York (number=1) or Berlin (number=2), footnote markers removed."""
    return [_CITATION.sub("", line) for line in _lines(f"para2para_text{number}.txt")]


WIKIPEDIA_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKIPEDIA_HELD_OUT_EVERY = 5  # every fifth article is held out for evaluation
MIN_ARTICLE_WORDS = 200  # below this a page is a redirect, a stub or a list
MIN_PARAGRAPH_WORDS = 12  # shorter lines of a parsed page are headings, captions or list items
_MARKUP_LEFT = re.compile(r"[|={}<>\[\]]")  # a line the wiki parser did not fully clean
_BOLD_ITALIC = re.compile(r"'{2,}")


@functools.cache
def wikipedia_articles() -> tuple[tuple[str, ...], ...]:
    """The prose paragraphs of the Wikipedia articles in gensim's shortened English dump
    (94 articles, Anarchism to Demographics of Angola), one tuple of paragraphs each.
    The wiki markup is removed by gensim's own parser for its dumps."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles = []
    with bz2.open(gensim_data_dir() / WIKIPEDIA_DUMP) as dump:
        for _title, page, _page_id in extract_pages(dump):
            paragraphs = []
            for line in filter_wiki(page).splitlines():
                line = " ".join(_BOLD_ITALIC.sub("", line).split())
                if len(line.split()) >= MIN_PARAGRAPH_WORDS and not _MARKUP_LEFT.search(line) and line[0] not in "*#:;":
                    paragraphs.append(line)
            if sum(len(p.split()) for p in paragraphs) >= MIN_ARTICLE_WORDS:
                articles.append(tuple(paragraphs))
    return tuple(articles)


def _sentences(documents) -> list[str]:
    return [s for doc in documents for s in split_sentences(doc)]


@dataclass(frozen=True)
class Corpus:
    """Held-out passages to retrieve among: the whole evaluation split, each passage's
    source, and its document where that is known (the default text; None for a user's)."""

    passages: tuple[str, ...]
    sources: tuple[str, ...]
    documents: tuple[str, ...] | None = None


@dataclass
class TextSplits:
    """Text for fits (calibration), for choices made on a source no fit sees
    (validation), and held out for the final report (evaluation). `sources` names the
    source of every passage, so results can be given per source. `corpus` is the whole
    evaluation split (by default: evaluation, documents unknown), which `subset` keeps
    whole: retrieval is judged over all of it."""

    calibration: list[str]
    evaluation: list[str]
    validation: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    corpus: Corpus | None = None

    def __post_init__(self):
        if self.corpus is None:
            self.corpus = Corpus(tuple(self.evaluation), tuple(self.sources.get(p, USER_SOURCE) for p in self.evaluation))

    def by_source(self, texts: list[str]) -> dict[str, list[str]]:
        """`texts` grouped by source, in order of first appearance."""
        groups: dict[str, list[str]] = {}
        for passage in texts:
            groups.setdefault(self.sources.get(passage, USER_SOURCE), []).append(passage)
        return groups


USER_SOURCE = "your text"


def _interleaved(groups: list[list[str]]) -> list[str]:
    """Round robin over the groups, so that every prefix is balanced between them."""
    return [passage for row in itertools.zip_longest(*groups) for passage in row if passage is not None]


def _build(roles: dict[str, dict[str, list[str]]], documents: dict[str, str]) -> TextSplits:
    """roles: source -> role -> passages. Duplicates are removed within a role, and a
    passage already in an earlier role (calibration, validation, evaluation) is dropped
    from a later one, so no passage is in two lists. documents: every evaluation
    passage's document."""
    seen: set[str] = set()
    lists: dict[str, list[list[str]]] = {"calibration": [], "validation": [], "evaluation": []}
    sources: dict[str, str] = {}
    for role, groups in lists.items():
        for source, by_role in roles.items():
            kept = [p for p in dict.fromkeys(by_role.get(role, [])) if p not in seen]
            seen.update(kept)
            sources.update(dict.fromkeys(kept, source))
            groups.append(spread_prefixes(kept))
    evaluation = _interleaved(lists["evaluation"])
    corpus = Corpus(tuple(evaluation), tuple(sources[p] for p in evaluation), tuple(documents[p] for p in evaluation))
    return TextSplits(calibration=_interleaved(lists["calibration"]), evaluation=evaluation,
                      validation=_interleaved(lists["validation"]), sources=sources, corpus=corpus)


NEWS_HELD_OUT_FROM = 200  # lee_background.cor's articles from this one on are held out
REVIEWS_HELD_OUT_FROM = 50  # of each polarity's 100 pang_lee_polarity.cor sentences (i % 100: the index in its polarity)
IMDB_HELD_OUT_FROM = 7


def _held_out_article(index: int) -> bool:
    return index % WIKIPEDIA_HELD_OUT_EVERY == WIKIPEDIA_HELD_OUT_EVERY - 1


def held_out_documents() -> dict[str, dict[str, list[str]]]:
    """source -> document name -> its sentences, for the held-out parts of the module
    docstring's table, in the evaluation split's order of sources and passages."""
    reviews, articles = movie_review_sentences(), wikipedia_articles()
    return {
        "news": {f"news {i}": split_sentences(article) for i, article in enumerate(lee_background_documents())
                 if i >= NEWS_HELD_OUT_FROM},
        "wikipedia": {**{f"wikipedia {i}": _sentences(article) for i, article in enumerate(articles) if _held_out_article(i)},
                      "wikipedia Berlin": _sentences(wikipedia_paragraphs(2))},
        "reviews": {**{f"review {i}": [review] for i, review in enumerate(reviews) if i % 100 >= REVIEWS_HELD_OUT_FROM},
                    **{f"imdb {i}": split_sentences(r) for i, r in enumerate(imdb_reviews()) if i >= IMDB_HELD_OUT_FROM}},
    }


def default_splits() -> TextSplits:
    """The fixed three-way split of the module docstring."""
    background, reviews = lee_background_documents(), movie_review_sentences()
    fit = [p for i, article in enumerate(wikipedia_articles()) if not _held_out_article(i) for p in article]
    held_out = held_out_documents()
    evaluation = {source: [p for passages in by_name.values() for p in passages] for source, by_name in held_out.items()}
    documents: dict[str, str] = {}  # a passage of two documents is the first's, as it counts for the first source
    for name, passage in ((name, p) for by_name in held_out.values() for name, passages in by_name.items() for p in passages):
        documents.setdefault(passage, name)
    return _build({
        "news": {"calibration": _sentences(background[:NEWS_HELD_OUT_FROM]), "evaluation": evaluation["news"]},
        "wikipedia": {"calibration": _sentences(fit + wikipedia_paragraphs(1)), "evaluation": evaluation["wikipedia"]},
        "reviews": {"validation": [r for i, r in enumerate(reviews) if i % 100 < REVIEWS_HELD_OUT_FROM]
                    + _sentences(imdb_reviews()[:IMDB_HELD_OUT_FROM]), "evaluation": evaluation["reviews"]},
    }, documents)


def splits_from_texts(texts: list[str], eval_fraction: float = 0.3, validation_fraction: float = 0.1) -> TextSplits:
    """Splits a user's passages without randomness, spreading the held-out passages evenly.

    Duplicates are removed first, so that no passage can land in two lists. Then the
    passage at the centre of each of round(n * eval_fraction) equal stretches goes to
    evaluation (for n=10 and 0.3: passages 1, 5 and 8), and of the rest, the same way,
    round(rest * validation_fraction) go to validation. One source has no other domain
    to validate on: validation is the user's own held-out text.
    """
    for name, fraction in (("evaluation", eval_fraction), ("validation", validation_fraction)):
        if not 0.0 < fraction < 1.0:
            raise UserError(f"the {name} fraction must be between 0 and 1 (exclusive), got {fraction}")
    passages = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    if len(passages) < MIN_USER_PASSAGES:
        raise UserError(
            f"only {len(passages)} distinct passages of text; give at least {MIN_USER_PASSAGES}, one per line"
        )
    rest, evaluation = _take_spread(passages, eval_fraction)
    calibration, validation = _take_spread(rest, validation_fraction)
    return TextSplits(calibration=spread_prefixes(calibration), evaluation=evaluation, validation=validation,
                      sources=dict.fromkeys(passages, USER_SOURCE))


def _take_spread(passages: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(the rest, the passages at the centres of round(n * fraction) equal stretches), at least one of each."""
    n = len(passages)
    taken = min(n - 1, max(1, round(n * fraction)))
    index = {(2 * j + 1) * n // (2 * taken) for j in range(taken)}
    return [p for i, p in enumerate(passages) if i not in index], [p for i, p in enumerate(passages) if i in index]


def _decode(data: bytes, path: Path) -> str:
    """UTF-8 if possible, else latin-1 if that gives mostly printable text; anything else counts as binary."""
    binary = UserError(f"{path} looks like a binary file, not text; give a plain-text file with one passage per line")
    if b"\x00" in data:
        raise binary
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    printable = sum(ch.isprintable() or ch.isspace() for ch in text)
    if printable < 0.95 * len(text):
        raise binary
    return text


def read_text_file(path: str | Path) -> list[str]:
    """A user's text: one passage per non-empty line, stripped."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"text file {path} does not exist; check the path given to --text")
    if not path.is_file():
        raise UserError(f"{path} is not a file; give --text a plain-text file with one passage per line")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read text file {path} ({exc.strerror}); check its permissions") from None
    passages = [line.strip() for line in _decode(data, path).splitlines() if line.strip()]
    if not passages:
        raise UserError(f"text file {path} is empty; put one passage of text per line")
    return passages


def hf_dataset_texts(name: str, split: str = "train", column: str = "text", limit: int = 2000) -> list[str]:
    """Up to `limit` non-empty strings from one column of a Hugging Face dataset.

    The dataset is streamed, so a large one is not downloaded in full. `datasets` is an
    optional package that ppocompress does not depend on.
    """
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"reading the dataset {name} needs the datasets package; pip install datasets, "
            "or pass --text FILE (one passage per line)"
        ) from None
    try:
        rows = datasets.load_dataset(name, split=split, streaming=True)
        column_names = rows.column_names
        if column_names is not None and column not in column_names:
            raise UserError(f"dataset {name} has no column {column!r}; choose one of {', '.join(column_names)}")
        values = (row[column] for row in rows)
        texts = list(itertools.islice((v.strip() for v in values if isinstance(v, str) and v.strip()), limit))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to reach or read the dataset is reported the same way
        raise UserError(
            f"could not reach dataset {name} (split {split}): {type(exc).__name__}: {first_line(exc)}; "
            "the Hugging Face hub may be offline, so pass --text FILE (one passage per line) instead"
        ) from None
    if not texts:
        raise UserError(f"dataset {name} (split {split}) has no text in column {column!r}; pass --text FILE instead")
    return texts


def evenly_spaced(texts: list[str], count: int) -> list[str]:
    """A deterministic subset of `count` passages spread over the whole list, or all of
    them if there are fewer."""
    if count >= len(texts):
        return list(texts)
    step = len(texts) / count
    return [texts[int(i * step)] for i in range(count)]


def spread_prefixes(texts: list[str]) -> list[str]:
    """The same passages reordered so that every prefix is spread over the whole list
    (bit-reversed positions, a van der Corput order): the first k passages, which plan
    scoring, importance and static int8 calibration take, sample the whole list instead
    of only its beginning."""
    bits = max(1, (len(texts) - 1).bit_length())
    order = sorted(range(len(texts)), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))
    return [texts[i] for i in order]


def balanced(groups: list[list[str]], count: int) -> list[str]:
    """`count` passages shared as equally as the groups' sizes allow (a small group gives
    all it has, the others share the rest), each group's spread over it, interleaved."""
    shares, left = [0] * len(groups), count
    by_size = sorted(range(len(groups)), key=lambda g: len(groups[g]))
    for assigned, group in enumerate(by_size):  # smallest first: what it cannot take goes to the others
        shares[group] = min(len(groups[group]), left // (len(groups) - assigned))
        left -= shares[group]
    return _interleaved([spread_prefixes(evenly_spaced(group, share)) for group, share in zip(groups, shares)])


def subset(splits: TextSplits, calibration: int, evaluation: int) -> TextSplits:
    """`calibration` and `evaluation` passages, each balanced between the sources and
    spread over each source, in an order whose every prefix is balanced too; validation
    is kept whole."""
    def pick(texts: list[str], count: int) -> list[str]:
        return balanced(list(splits.by_source(texts).values()), count)

    return replace(splits, calibration=pick(splits.calibration, calibration), evaluation=pick(splits.evaluation, evaluation))


def load_splits(path: str | Path | None = None) -> TextSplits:
    """The default splits, or a user's text file split the same fixed way."""
    return splits_from_texts(read_text_file(path)) if path else default_splits()
