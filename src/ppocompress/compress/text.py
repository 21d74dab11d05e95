"""English text for calibrating and evaluating compressed models.

The default text comes from files that the `gensim` wheel ships under
gensim/test/test_data. They are found without importing gensim, because
`import gensim` takes most of a second (it loads scipy). Only natural English text
is used: no stemmed, tokenised-keyword or non-English files.

Default split (`default_splits`). It is fixed and uses no random numbers. The same
inputs always give the same lists, and no passage is in both lists:

| source                                    | calibration                 | evaluation (held out)      |
|-------------------------------------------|-----------------------------|----------------------------|
| lee_background.cor (300 news articles)    | articles 0-199: 1,714       | articles 200-299: 818      |
| pang_lee_polarity.cor (100 neg, 100 pos)  | neg 0-49 and pos 0-49: 100  | neg 50-99, pos 50-99: 100  |
| alldata-id-10.txt (10 IMDB reviews)       | reviews 0-6: 105            | reviews 7-9: 24            |
| para2para_text1.txt (New York, Wikipedia) | all: 85                     |                            |
| para2para_text2.txt (Berlin, Wikipedia)   |                             | all: 110                   |
| total                                     | 2,004 sentences             | 1,052 sentences            |

Articles and reviews are split into sentences (`split_sentences`); movie-review lines
are already single sentences. Each list keeps one copy of a repeated sentence
(lee_background.cor has only 293 distinct articles among its 300 lines). A sentence
that is also in the calibration list would be left out of the evaluation list, but
none is, for these files. A search must only ever see the calibration list. The
evaluation list is for the final report.

lee.cor (50 documents, with human similarity judgements) is in neither list. It is the
separate benchmark that `ppocompress.compress.quality.lee_correlation` uses.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppocompress.errors import UserError

MIN_SENTENCE_WORDS = 5
MIN_USER_PASSAGES = 10

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CITATION = re.compile(r"\[\d+\]")  # Wikipedia footnote markers such as "[17]"
_REVIEW_ID = re.compile(r"^_\*\d+\s+")  # the "_*3 " prefix of alldata-id-10.txt lines
_LABEL = re.compile(r"^__label__\S+\s+")  # the fastText label of pang_lee_polarity.cor lines


def gensim_data_dir() -> Path:
    """gensim's test_data folder, found without importing gensim (importing it takes about 0.8 s)."""
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


def _sentences(documents: list[str]) -> list[str]:
    return [s for doc in documents for s in split_sentences(doc)]


@dataclass
class TextSplits:
    """Text for a search (calibration) and held-out text for the final report (evaluation)."""

    calibration: list[str]
    evaluation: list[str]


def _disjoint(calibration: list[str], evaluation: list[str]) -> TextSplits:
    """Removes duplicates within each list, and from evaluation anything already in calibration."""
    calibration = list(dict.fromkeys(calibration))
    seen = set(calibration)
    return TextSplits(calibration, [t for t in dict.fromkeys(evaluation) if t not in seen])


def default_splits() -> TextSplits:
    """The fixed calibration/evaluation split of the module docstring."""
    background = lee_background_documents()
    reviews = movie_review_sentences()
    negative, positive = reviews[:100], reviews[100:]
    imdb = imdb_reviews()
    calibration = (
        _sentences(background[:200]) + negative[:50] + positive[:50] + _sentences(imdb[:7]) + _sentences(wikipedia_paragraphs(1))
    )
    evaluation = (
        _sentences(background[200:]) + negative[50:] + positive[50:] + _sentences(imdb[7:]) + _sentences(wikipedia_paragraphs(2))
    )
    return _disjoint(calibration, evaluation)


def splits_from_texts(texts: list[str], eval_fraction: float = 0.3) -> TextSplits:
    """Splits a user's passages without randomness, spreading the evaluation passages evenly.

    Duplicates are removed first, so that no passage can land in both lists. Then the
    passage at the centre of each of round(n * eval_fraction) equal stretches goes to
    evaluation. For n=10 and 0.3 those are passages 1, 5 and 8.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise UserError(f"the evaluation fraction must be between 0 and 1 (exclusive), got {eval_fraction}")
    passages = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    n = len(passages)
    if n < MIN_USER_PASSAGES:
        raise UserError(
            f"only {n} distinct passages of text; give at least {MIN_USER_PASSAGES}, one per line"
        )
    n_eval = min(n - 1, max(1, round(n * eval_fraction)))
    eval_index = {(2 * j + 1) * n // (2 * n_eval) for j in range(n_eval)}
    return TextSplits(
        calibration=[p for i, p in enumerate(passages) if i not in eval_index],
        evaluation=[p for i, p in enumerate(passages) if i in eval_index],
    )


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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def hf_dataset_texts(name: str, split: str = "train", column: str = "text", limit: int = 2000) -> list[str]:
    """Up to `limit` non-empty strings from one column of a Hugging Face dataset.

    The dataset is streamed, so a large one is not downloaded in full. `datasets` is an
    optional package that ppocompress does not depend on.
    """
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"reading the dataset {name} needs the datasets package; pip install datasets, or pass --text FILE (one passage per line)"
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
            f"could not reach dataset {name} (split {split}): {_first_line(exc)}; the Hugging Face hub may be offline, "
            "so pass --text FILE (one passage per line) instead"
        ) from None
    if not texts:
        raise UserError(f"dataset {name} (split {split}) has no text in column {column!r}; pass --text FILE instead")
    return texts


def evenly_spaced(texts: list[str], count: int) -> list[str]:
    """A deterministic subset of `count` passages spread over the whole list (so a
    subset keeps the mix of sources), or all of them if there are fewer."""
    if count >= len(texts):
        return list(texts)
    step = len(texts) / count
    return [texts[int(i * step)] for i in range(count)]


def spread_prefixes(texts: list[str]) -> list[str]:
    """The same passages reordered so that every prefix is spread over the whole list
    (bit-reversed positions, a van der Corput order): the first k passages, which plan
    scoring, importance and static int8 calibration take, sample every source in
    proportion instead of only the first source in the list."""
    bits = max(1, (len(texts) - 1).bit_length())
    order = sorted(range(len(texts)), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))
    return [texts[i] for i in order]


def subset(splits: "TextSplits", calibration: int, evaluation: int) -> "TextSplits":
    """`calibration` passages spread over the sources, in an order whose every prefix is
    spread too; `evaluation` passages spread over the held-out list."""
    return TextSplits(spread_prefixes(evenly_spaced(splits.calibration, calibration)), evenly_spaced(splits.evaluation, evaluation))


def load_splits(path: str | Path | None = None) -> TextSplits:
    """The default splits, or a user's text file split the same fixed way."""
    return splits_from_texts(read_text_file(path)) if path else default_splits()
