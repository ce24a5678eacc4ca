"""The pipeline's own datatrove blocks, in data-flow order.

Each block is a datatrove PipelineStep (`run(data, rank, world_size)` over Documents). Removal steps subclass
datatrove's BaseFilter, so each dropped document goes to that step's `RejectWriter` with its reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import time
import tomllib
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.decont.n_grams import NGramsDecontFilter
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
from datatrove.pipeline.filters.gopher_repetition_filter import GopherRepetitionFilter, find_duplicates
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.readers.jsonl import JsonlReader
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.batching import batched
from datatrove.utils.stats import MetricStats
from datatrove.utils.text import DEF_TEXT_NORM_CONFIG, NUMBERS_PATTERN, PUNCTUATION, PUNCTUATION_SET
from datatrove.utils.text import simplify_text as datatrove_simplify
from datatrove.utils.typeshelper import StatHints
from datatrove.utils.word_tokenizers import WordTokenizer
from xxhash import xxh64_intdigest

from vernacular.cache import UNREADABLE, cache_dir, save_arrays
from vernacular.data.languages import ALL_LANGUAGES, from_langid_label
from vernacular.data.pii import iban_valid, redact  # noqa: F401 (iban_valid: re-exported)
from vernacular.data.robots import AI_USER_AGENTS, RobotsTxt, domain_of, in_blocklist


def _register_gzip6() -> str:
    """An fsspec compression "gzip-6": gzip at level 6 (the gzip tool's default). fsspec opens .gz files with
    Python's GzipFile, whose default level 9 made compressing the cleaned text ~6x slower for ~2 % smaller files."""
    from gzip import GzipFile

    from fsspec.compression import compr, register_compression

    if "gzip-6" not in compr:
        register_compression("gzip-6", lambda f, **kwargs: GzipFile(fileobj=f, compresslevel=6, **kwargs), [])
    return "gzip-6"


GZIP6 = _register_gzip6()


class EuropeanWordTokenizer(WordTokenizer):
    """Whitespace words (Gopher's definition: punctuation stays attached) for the space-separated scripts of all EU
    languages. datatrove's default tokenizers need spaCy or NLTK data files, which an offline install lacks."""

    _SENT = re.compile(r"[^.!?…]+(?:[.!?…]+|$)", re.UNICODE)

    def __init__(self, language: str | None = None):
        super().__init__(language)

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in self._SENT.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._SENT.finditer(text) if m.group().strip()]


@lru_cache(maxsize=1)
def _not_nonspacing_mark() -> np.ndarray:
    """bool[sys.maxunicode + 1]: False at every Unicode nonspacing mark (category Mn in this Python's `unicodedata`,
    as datatrove's diacritics step), True elsewhere."""
    keep = np.ones(sys.maxunicode + 1, dtype=bool)
    # Unicode puts combining marks in planes 0, 1 and 14 only (2-3: CJK ideographs, 15-16: private use, the rest
    # unassigned), so those 196,608 code points are looked at instead of all 1,114,112
    planes = (*range(0, 0x20000), *range(0xE0000, 0xF0000))
    keep[[c for c in planes if unicodedata.category(chr(c)) == "Mn"]] = False
    return keep


def strip_nonspacing_marks(text: str) -> str:
    """`text` without its nonspacing marks (category Mn): a numpy mask over the UTF-32 code points, ~10x faster
    than `str.translate` with a deletion table on long non-ASCII text (same output)."""
    if text.isascii():
        return text
    # "surrogatepass": JSON text may hold a lone surrogate
    codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    keep = _not_nonspacing_mark()[codepoints]
    return text if keep.all() else codepoints[keep].tobytes().decode("utf-32-le", "surrogatepass")


_PUNCT = re.compile("[" + re.escape(PUNCTUATION) + "]+")  # datatrove's punctuation


def simplify_text(text: str, config=None) -> str:
    """datatrove's `simplify_text` (lowercase, numbers -> 0, punctuation -> space, whitespace collapsed, diacritics
    removed after NFD), same output, about 2x faster: punctuation by a regex, whitespace by `split`, the diacritics by
    `strip_nonspacing_marks`. Configs other than datatrove's default `TextNormConfig()` go to datatrove's own
    function."""
    if config is not None and config != DEF_TEXT_NORM_CONFIG:
        return datatrove_simplify(text, config)
    # runs of punctuation and whitespace -> one space (`str.split` and regex `\s` share Py_UNICODE_ISSPACE)
    text = " ".join(_PUNCT.sub(" ", NUMBERS_PATTERN.sub("0", text.lower())).split())
    text = unicodedata.normalize("NFD", text)
    return strip_nonspacing_marks(text).strip()


def ngram_hash(ngram: str) -> int:
    """64-bit xxHash (XXH64, seed 0) of the n-gram's UTF-8 bytes: the hash of datatrove's `hash_fc="xxhash"` config
    (its wrapper accepts only bytes), for decontamination n-grams and MinHash shingles."""
    return xxh64_intdigest(ngram.encode("utf-8"))


@lru_cache(maxsize=4)
def simplified_words(text: str) -> tuple[str, ...]:
    """`simplify_text(text).split()`, cached for the last few texts: decontamination and the MinHash signatures of the
    filter stage look at the same document one after the other (str hashes are cached, so a hit costs O(1))."""
    return tuple(simplify_text(text).split())


def word_ngrams(text: str, n: int) -> list[str]:
    """Every n consecutive words of the simplified text, space-joined (datatrove's shingles and decontamination
    n-grams with a whitespace word tokenizer); none when the text has fewer than n words."""
    return join_ngrams(simplified_words(text), n)


def ngram_hashes(text: str, n: int) -> list[int]:
    """`ngram_hash` of each of `word_ngrams(text, n)`, in order, without building the n-gram strings: the words are
    joined with single spaces once, and each n-gram is hashed as a slice of that UTF-8 buffer (the same bytes)."""
    words = simplified_words(text)
    k = len(words) - n + 1
    if k <= 0:
        return []
    buf = " ".join(words).encode("utf-8")
    spaces = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 32)  # words hold no spaces: these separate them
    starts = [0, *(spaces + 1).tolist()]
    ends = [*spaces.tolist(), len(buf)]
    view = memoryview(buf)
    return [xxh64_intdigest(view[a:b]) for a, b in zip(starts[:k], ends[n - 1:])]


def join_ngrams(words: Sequence[str], n: int) -> list[str]:
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


# ---------------------------------------------------------------------------------------------------- bookkeeping


class InputCounter(PipelineStep):
    """Counts what the readers produced, per source and declared language, before anything is removed.

    The manifest checks documents in = kept + removed against these counts."""

    type = "📊 - STATS"
    name = "🔢 input counter"

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        n = 0
        for n, doc in enumerate(data, 1):
            doc.metadata["declared_lang"] = doc.metadata.get("lang") or "und"
            c = counts[doc.metadata.get("source", "?")][doc.metadata["declared_lang"]]
            c[0] += 1
            c[1] += len(doc.text.encode("utf-8", "surrogatepass"))
            yield doc
        add_count(self, "documents_in", n)
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{rank:05d}.json").write_text(json.dumps(counts, indent=1))


def document_dict(self, document: Document) -> dict:
    """JsonlWriter adapter: the record datatrove's default adapter writes (non-empty text, id, metadata) without its
    `dataclasses.asdict` deep copy of every document (7 % of the filter stage's time in a profile)."""
    return {k: v for k, v in (("text", document.text), ("id", document.id), ("metadata", document.metadata)) if v}


class RejectWriter(JsonlWriter):
    """Writes removed documents to `rejects/<step>/<rank>.jsonl.gz` with `step`, `reason` and source location."""

    def __init__(self, rejects_dir: str, step: str, default_reason: str | None = None):
        super().__init__(rejects_dir, output_filename=f"{step}/${{rank}}.jsonl.gz", adapter=document_dict,
                         compression=GZIP6)
        self.step = step
        self.default_reason = default_reason or step

    def write(self, document: Document, rank: int = 0, **kwargs):
        meta = document.metadata
        meta["step"] = self.step
        meta["reason"] = meta.pop("filter_reason", None) or meta.get("quarantine") or self.default_reason
        super().write(document, rank, **kwargs)


class RankJsonlReader(JsonlReader):
    """Reads exactly `<rank>.jsonl` of an intermediate folder, so document indices line up with the dedup
    signatures written by the same rank (a rank that kept nothing has no file: plain sharding would shift ranks)."""

    def __init__(self, data_folder: str):
        super().__init__(data_folder, compression=None, add_file_path=False)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        name, n = f"{rank:05d}.jsonl", 0
        if self.data_folder.exists(name):
            for n, doc in enumerate(self.read_file(name), 1):
                yield doc
        add_count(self, "documents", n)


def add_count(step: PipelineStep, label: str, n: int) -> None:
    """`step.stat_update(label)` n times, in one go (the same statistic: total n, each update 1)."""
    if n:
        step.stats[label] = step.stats[label] + MetricStats(total=n, n=n, mean=1.0, min=1, max=1)


class LeanFilter(BaseFilter):
    """datatrove's BaseFilter with its per-document bookkeeping made cheap: the same results, exclusion writer and
    counts (`total`, `forwarded`, `dropped`, `dropped_<reason>`) kept in local counters and added to the step's
    stats once at the end, and the time measured per 256 documents. BaseFilter.run updates three running statistics,
    a document-length statistic and a timer for every document in every filter (~10 µs each time, as much as a
    cheap filter's own work)."""

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: dict[str, int] = defaultdict(int)
        clock, elapsed, timed = time.perf_counter, 0.0, 0
        with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            try:
                for batch in batched(data, self.batch_size):
                    t0 = clock()
                    results = self.filter_batch(batch)
                    elapsed += clock() - t0
                    timed += len(batch)
                    if timed >= 256:
                        self.stats.time_stats.update(elapsed, unit="256 docs")
                        elapsed, timed = 0.0, 0
                    for doc, result in zip(batch, results):
                        counts[StatHints.total] += 1
                        keep, reason = result if isinstance(result, tuple) else (result, None)
                        if keep:
                            counts[StatHints.forwarded] += 1
                            yield doc
                            continue
                        counts[StatHints.dropped] += 1
                        if reason:
                            counts[f"dropped_{reason}"] += 1
                        if writer:
                            if reason:
                                doc.metadata["filter_reason"] = reason
                            writer.write(doc, rank)
            finally:
                if timed:
                    self.stats.time_stats.update(elapsed, unit="256 docs")
                for label, n in counts.items():
                    add_count(self, label, n)


# ---------------------------------------------------------------------------------------------------- cleaning


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff\ufffe]")


class Normalize(BaseFormatter):
    """Unicode NFC, CRLF -> LF, control and zero-width characters removed, trailing spaces trimmed."""

    name = "🧽 normalize"

    def format(self, text: str) -> str:
        text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
        text = _CONTROL.sub("", text)
        return "\n".join(line.rstrip() for line in text.split("\n")).strip()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            if not doc.metadata.get("quarantine"):
                doc.text = self.format(doc.text)
            yield doc


class Quarantine(LeanFilter):
    """Malformed input (flagged by the readers), empty and oversized documents go to the rejects, with the reason."""

    name = "🚧 quarantine"

    def __init__(self, max_doc_bytes: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.max_doc_bytes = max_doc_bytes

    def filter(self, doc: Document):
        if reason := doc.metadata.get("quarantine"):
            return False, reason
        if not doc.text.strip():
            return False, "empty"
        if len(doc.text.encode("utf-8")) > self.max_doc_bytes:
            return False, "oversized"
        return True


class LanguageFilter(LeanFilter):
    """Offline language ID: py3langid's model and decision rule restricted to our language set, normalized
    probabilities, run on batches of documents (`vernacular.data.langid`: same scores, vectorised features).

    A declared language is kept when it is the top label or close to it (`min_declared_prob`: short sentences of
    close pairs such as nob/nno/dan are often a near tie); otherwise the document is a `lang-mismatch`. Documents
    without a declared language get the identified one if it is confident enough, else `lang-unknown`."""

    name = "🌍 language id"

    def __init__(self, languages: tuple[str, ...] = ALL_LANGUAGES, min_declared_prob: float = 0.2,
                 min_confidence: float = 0.5, max_chars: int = 1000, exclusion_writer=None, batch_size: int = 256):
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.max_chars = max_chars  # LID reads a document's beginning: its cost is linear in length (see `head`)
        self.languages = tuple(languages)
        self.min_declared_prob = min_declared_prob
        self.min_confidence = min_confidence
        self._codes: dict[int, str] = {}  # column of the identifier's probabilities -> our code
        self._columns: dict[str, int] = {}

    @property
    def identifier(self):
        from vernacular.data.langid import identifier

        ident = identifier(self.languages)  # cached per process: built in each worker, never pickled
        if not self._codes:
            # our code -> its label's first column (an aliased label's later column is zeroed by the identifier)
            self._columns = {}
            for col, label in enumerate(ident.nb_classes):
                self._columns.setdefault(from_langid_label(label), col)
            self._codes = {col: code for code, col in self._columns.items()}
        return ident

    def head(self, text: str) -> str:
        """What language ID reads: the text up to `max_chars` characters, cut at the last whitespace before the limit
        (a cut word would add n-grams of no language) unless that drops more than a tenth. On the 3,690 NTREX-128
        news articles (30 languages, 2,212 characters on average) the decisions and top labels with 1,000 characters
        are those with 5,000, and language ID takes a third of the time (`benchmarks/data_pipeline.py`)."""
        if len(text) <= self.max_chars:
            return text
        cut = max(text.rfind(" ", 0, self.max_chars + 1), text.rfind("\n", 0, self.max_chars + 1))
        return text[:cut] if cut >= self.max_chars * 0.9 else text[: self.max_chars]

    def predict(self, text: str) -> list[tuple[str, float]]:
        """Our language codes with their probabilities, best first."""
        return self.predict_batch([text])[0]

    def predict_batch(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        ranked = self.identifier.rank_batch([self.head(t) for t in texts])
        return [[(from_langid_label(label), p) for label, p in r] for r in ranked]

    def filter(self, doc: Document):
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list:
        probs = self.identifier.probabilities([self.head(d.text) for d in batch])
        return [self._decide(doc, row) for doc, row in zip(batch, probs)]

    def _decide(self, doc: Document, probs: np.ndarray):
        """`probs`: the identifier's probabilities for the document (one column per py3langid class). The top label
        is the first of the highest (as `rank` orders them)."""
        top_col = int(probs.argmax())
        top, conf = self._codes[top_col], float(probs[top_col])
        doc.metadata["lid"] = top
        doc.metadata["lid_prob"] = round(conf, 4)
        declared = doc.metadata.get("lang")
        if declared is None:
            if conf < self.min_confidence:
                return False, "lang-unknown"
            doc.metadata["lang"] = top
            return True
        if declared not in self.languages:
            return False, "lang-unsupported"
        col = self._columns.get(declared)
        if top == declared or (col is not None and float(probs[col]) >= self.min_declared_prob):
            return True
        return False, "lang-mismatch"


@dataclass
class QualityThresholds:
    """Gopher / FineWeb-2 style document heuristics. Defaults keep single clean news sentences (NTREX lines)."""

    min_words: int = 3
    max_words: int = 100_000
    min_mean_word_length: float = 2.0
    max_mean_word_length: float = 14.0
    max_symbol_word_ratio: float = 0.1  # '#' and ellipses per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.6  # share of words with at least one letter
    max_dup_line_frac: float = 0.3
    max_dup_line_char_frac: float = 0.2
    max_dup_para_frac: float = 0.3
    max_dup_para_char_frac: float = 0.2


def load_thresholds(path: str | None) -> dict[str, QualityThresholds]:
    """TOML: a `[default]` table and optional per-language tables (`[fin]`, `[deu]`, ...) overriding single keys."""
    tables = {}
    if path:
        with open(path, "rb") as f:
            tables = tomllib.load(f)
    known = {f.name for f in fields(QualityThresholds)}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: [{name}] must be a table of thresholds")
        if unknown := set(table) - known:
            raise ValueError(f"{path}: unknown threshold(s) {sorted(unknown)} in [{name}]; known: {sorted(known)}")
    default = QualityThresholds(**tables.get("default", {}))
    out = {"default": default}
    for name, table in tables.items():
        if name != "default":
            out[name] = QualityThresholds(**(asdict(default) | table))
    return out


class QualityFilter(LeanFilter):
    """Per-language quality: datatrove's Gopher quality and repetition filters, one configured pair per language."""

    name = "🏅 quality"

    def __init__(self, thresholds: dict[str, QualityThresholds], exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.thresholds = thresholds
        self._filters: dict[str, tuple[GopherQualityFilter, GopherRepetitionFilter]] = {}

    def _for(self, lang: str):
        if lang not in self._filters:
            t = self.thresholds.get(lang, self.thresholds["default"])
            tok = EuropeanWordTokenizer(lang)
            quality = GopherQualityFilter(
                min_doc_words=t.min_words, max_doc_words=t.max_words, min_avg_word_length=t.min_mean_word_length,
                max_avg_word_length=t.max_mean_word_length, max_symbol_word_ratio=t.max_symbol_word_ratio,
                max_bullet_lines_ratio=t.max_bullet_lines_ratio, max_ellipsis_lines_ratio=t.max_ellipsis_lines_ratio,
                max_non_alpha_words_ratio=t.min_alpha_words_ratio, min_stop_words=None, language=tok)
            repetition = GopherRepetitionFilter(
                dup_line_frac=t.max_dup_line_frac, dup_para_frac=t.max_dup_para_frac,
                dup_line_char_frac=t.max_dup_line_char_frac, dup_para_char_frac=t.max_dup_para_char_frac,
                top_n_grams=(), dup_n_grams=(), language=tok)
            self._filters[lang] = (quality, repetition)
        return self._filters[lang]

    def filter(self, doc: Document):
        quality, repetition = self._for(doc.metadata.get("lang") or "default")
        for keep in (gopher_quality(quality, doc), gopher_repetition(repetition, doc)):
            if keep is not True:
                return False, "quality:" + keep[1].removeprefix("gopher_")
        return True


_PUNCTUATION_CHARS = "".join(sorted(PUNCTUATION_SET))


def gopher_quality(f: GopherQualityFilter, doc: Document):
    """`f.filter(doc)` (datatrove's Gopher quality rules, same results and reasons) for our whitespace word
    tokenizer, with cheaper word statistics: `w.strip(punctuation)` for "has a non-punctuation character", an
    integer mean, `str.isalpha` over each word."""
    if not isinstance(f.language, EuropeanWordTokenizer):
        return f.filter(doc)
    text = doc.text
    words = text.split()
    n_words = len(words)
    lengths = [len(w) for w in words if w.strip(_PUNCTUATION_CHARS)]  # words with a non-punctuation character
    if f.min_doc_words and len(lengths) < f.min_doc_words:
        return False, "gopher_short_doc"
    if f.max_doc_words and len(lengths) > f.max_doc_words:
        return False, "gopher_long_doc"
    mean = sum(lengths) / len(lengths) if lengths else float("nan")  # np.mean of the ints: the same float
    if f.min_avg_word_length and mean < f.min_avg_word_length:
        return False, "gopher_below_avg_threshold"
    if f.max_avg_word_length and mean > f.max_avg_word_length:
        return False, "gopher_above_avg_threshold"
    if f.max_symbol_word_ratio and text.count("#") / n_words > f.max_symbol_word_ratio:
        return False, "gopher_too_many_hashes"
    if f.max_symbol_word_ratio and (text.count("...") + text.count("…")) / n_words > f.max_symbol_word_ratio:
        return False, "gopher_too_many_ellipsis"
    lines = text.splitlines()
    if (f.max_bullet_lines_ratio
            and sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines) > f.max_bullet_lines_ratio):
        return False, "gopher_too_many_bullets"
    if (f.max_ellipsis_lines_ratio
            and sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines) > f.max_ellipsis_lines_ratio):
        return False, "gopher_too_many_end_ellipsis"
    if (f.max_non_alpha_words_ratio
            and sum(w.isalpha() or any(map(str.isalpha, w)) for w in words) / n_words < f.max_non_alpha_words_ratio):
        return False, "gopher_below_alpha_threshold"
    if f.min_stop_words and len(f.stop_words.intersection(set(words))) < f.min_stop_words:
        return False, "gopher_enough_stop_words"
    return True


def gopher_repetition(f: GopherRepetitionFilter, doc: Document):
    """`f.filter(doc)` (datatrove's Gopher repetition rules); without n-gram rules the words are not split."""
    if f.top_n_grams or f.dup_n_grams:
        return f.filter(doc)
    text = doc.text
    if not text:
        return False, "empty"
    paragraphs = f.paragraph_exp.split(text.strip()) if "\n\n" in text else [text.strip()]
    duplicates, chars = find_duplicates(paragraphs)
    if f.dup_para_frac and duplicates / len(paragraphs) > f.dup_para_frac:
        return False, "dup_para_frac"
    if f.dup_para_char_frac and chars / len(text) > f.dup_para_char_frac:
        return False, "dup_para_char_frac"
    lines = f._line_splitter.split(text)
    duplicates, chars = find_duplicates(lines)
    if f.dup_line_frac and duplicates / len(lines) > f.dup_line_frac:
        return False, "dup_line_frac"
    if f.dup_line_char_frac and chars / len(text) > f.dup_line_char_frac:
        return False, "dup_line_char_frac"
    return True


class OptOutFilter(LeanFilter):
    """TDM opt-out: drop documents whose URL an AI crawler may not fetch per the site's robots.txt (RFC 9309), or
    whose domain (or a parent domain) is on the blocklist. Documents without a URL are not web pages: kept."""

    name = "🚫 tdm opt-out"

    def __init__(self, robots: dict[str, str], blocklist: frozenset[str] = frozenset(),
                 agents: tuple[str, ...] = AI_USER_AGENTS, exclusion_writer=None):
        """`agents`: the AI crawler tokens (default: the shipped ai.robots.txt list), the lab's own crawler first."""
        super().__init__(exclusion_writer)
        self.robots = {d.lower().removeprefix("www."): RobotsTxt.parse(text) for d, text in robots.items()}
        self.blocklist = frozenset(blocklist)
        self.agents = tuple(agents)

    def filter(self, doc: Document):
        url = doc.metadata.get("url")
        if not url:
            return True
        domain = domain_of(url)
        if in_blocklist(domain, self.blocklist):
            return False, "blocklist"
        robots = self.robots.get(domain)
        if robots is not None and (agent := robots.opted_out(url, self.agents)):
            return False, f"robots:{agent}"
        return True


# ---------------------------------------------------------------------------------------------------- decontamination


def decont_config(n_grams: int):
    """datatrove's NGramsDecontConfig: its text normalization, 64-bit xxHash (`ngram_hash`), n words per n-gram."""
    from datatrove.pipeline.decont.n_grams import NGramsDecontConfig
    from datatrove.utils.hashing import HashConfig

    return NGramsDecontConfig(n_grams=n_grams, hash_config=HashConfig(precision=64, hash_fc="xxhash"))


class EvalNGramIndexer(PipelineStep):
    """Writes datatrove's decontamination index (`<task>.index.hashes`: raw uint64 n-gram hashes, the format its
    `NGramsDecontFilter` loads) from plain-text evaluation files, one text per line; the task is the file's path
    relative to its root (`flores200/deu`).

    datatrove's own `NGramsDecontIndexer` takes its texts from lighteval's task registry, which downloads the datasets
    from the hub; evaluation sets that ship as local text files are indexed here the same way (datatrove's
    `simplify_text` normalization, word n-grams, the same hash function). Lines shorter than n words have no n-gram
    and cannot be matched: their count is written to `lines.<rank>.json` for the manifest. Rank r of W indexes every
    W-th file. Each file's index is cached (`vernacular.cache`, `decont/<key>.npz`) under a key of its bytes, so the
    evaluation sets shipped with Vernacular are indexed once per machine, not on every run."""

    type = "🦠 - DECONT"
    name = "💥 N-grams index (local eval files)"
    INDEX_FORMAT = 1  # bump when the n-grams or their hashes change: cached indexes are keyed by it

    def __init__(self, files: list[tuple[str, str]], output_folder: str, n_grams: int):
        super().__init__()
        self.files = files  # (task name, path)
        self.output_folder = output_folder
        self.n_grams = n_grams

    def cache_key(self, text: bytes) -> str:
        """The file's index depends only on its bytes, n, the normalization (this Python's Unicode database) and
        `INDEX_FORMAT`."""
        key = repr((hashlib.sha256(text).hexdigest(), self.n_grams, unicodedata.unidata_version, self.INDEX_FORMAT))
        return hashlib.sha1(key.encode()).hexdigest()[:20]

    def index(self, text: str, config) -> tuple[np.ndarray, int, int]:
        """(sorted unique n-gram hashes, lines with words, those shorter than n words) of one evaluation file."""
        hashes, n_lines, short = set(), 0, 0
        for line in text.splitlines():
            words = simplified_words(line)
            if not words:
                continue
            n_lines += 1
            short += len(words) < self.n_grams
            hashes.update(ngram_hashes(line, self.n_grams))
        return np.array(sorted(hashes), dtype=config.hash_config.np_dtype), n_lines, short

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        config = decont_config(self.n_grams)
        out = Path(self.output_folder)
        out.mkdir(parents=True, exist_ok=True)
        lines = {}
        for task, path in self.files[rank::world_size]:
            text = Path(path).read_bytes()
            cached = cache_dir("decont") / f"{self.cache_key(text)}.npz"
            try:  # written by np.savez below: plain arrays, no pickles
                with np.load(cached, allow_pickle=False) as z:
                    hashes, (n_lines, short) = z["hashes"], z["lines"].tolist()
            except UNREADABLE:
                hashes, n_lines, short = self.index(text.decode("utf-8"), config)
                with contextlib.suppress(OSError):
                    save_arrays(cached, hashes=hashes, lines=np.array([n_lines, short]))
            self.stat_update("eval_lines", value=n_lines)
            name = task.replace("/", "__").replace(" ", "_")
            hashes.tofile(out / f"{name}.index.hashes")
            lines[task] = {"path": str(path), "lines": n_lines, "shorter_than_n": short, "ngrams": len(hashes)}
        (out / f"lines.{rank:05d}.json").write_text(json.dumps(lines, indent=1))


class NgramIndex:
    """The decontamination index {n-gram hash: task}. datatrove writes each stage's steps into its `executor.json`,
    and every later stage's file repeats the stages it depends on: as a plain dict, a loaded index (~1 M hashes for
    FLORES-200) would be written there as JSON again and again (~30 MB per stage with one worker). This one is
    written as its size (`ExecutorJSONEncoder` writes `str(o)` for objects it does not know)."""

    def __init__(self, hashes: dict[int, str]):
        self.hashes = hashes
        self.get = hashes.get

    def __len__(self) -> int:
        return len(self.hashes)

    def __repr__(self) -> str:
        return f"<{len(self):,} n-gram hashes>"


class Decontaminate(LeanFilter, NGramsDecontFilter):
    """datatrove's NGramsDecontFilter with our whitespace word tokenizer (its default needs spaCy models): a
    document sharing any n-gram with an evaluation text is removed as `contaminated`, with `contaminated_ngram` and
    `contaminated_task` in its metadata (kept in the rejects)."""

    name = "💥 decontaminate"

    def __init__(self, index_folder: str, n_grams: int, exclusion_writer=None):
        from datatrove.io import get_datafolder

        BaseFilter.__init__(self, exclusion_writer)  # NGramsDecontFilter.__init__ would load a spaCy tokenizer
        self.index_folder = get_datafolder(index_folder)
        self.config = decont_config(n_grams)
        self.language = "multilingual"
        self._index_hashes = None

    def load_index_hashes(self):
        """datatrove's `load_index_hashes` (every `**/*.index.hashes` file: {hash: task}, later files win), one
        `dict.update` per file rather than a Python loop over the hashes."""
        index = {}
        for name in self.index_folder.list_files(glob_pattern="**/*.index.hashes"):
            with self.index_folder.open(name, mode="rb") as f:
                hashes = np.frombuffer(f.read(), dtype=np.dtype(self.config.hash_config.np_descr))
            index.update(dict.fromkeys(hashes.tolist(), name.removesuffix(".index.hashes")))
        self._index_hashes = NgramIndex(index)

    def filter(self, doc: Document):
        """datatrove's NGramsDecontFilter.filter with `simplify_text` and `ngram_hash` (same n-grams, same index)."""
        if self._index_hashes is None:
            self.load_index_hashes()
        n = self.config.n_grams
        for i, h in enumerate(ngram_hashes(doc.text, n)):
            if (task := self._index_hashes.get(h)) is not None:
                doc.metadata["contaminated_ngram"] = " ".join(simplified_words(doc.text)[i:i + n])
                doc.metadata["contaminated_task"] = task.replace("__", "/")
                self.stat_update(f"contaminated_{task}")
                return False, "contaminated"
        return True


class MinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash stage 1 with its shingles computed by `word_ngrams` and `ngram_hash` (same simplified text and word
    n-grams, 64-bit xxHash): the config's `hash_config` must be xxhash, 64-bit."""

    def __init__(self, output_folder: str, config, language: WordTokenizer | None = None, **kwargs):
        super().__init__(output_folder, config=config, language=language or EuropeanWordTokenizer(), **kwargs)

    def get_shingles(self, text: str) -> np.ndarray:
        return np.array([ngram_hash(g) for g in word_ngrams(text, self.config.n_grams)], dtype=np.uint64).reshape((-1, 1))


_MERSENNE_61 = np.uint64((1 << 61) - 1)  # datatrove's `_mersenne_prime`


class MinhashSignatures(PipelineStep):
    """datatrove's MinHash stage 1 (same shingles, permutations and signatures as `MinhashSignature`), computed in
    the filter stage for every document it keeps, in batches: one numpy pass over the shingles of many documents
    instead of ~20 numpy calls per document. Writes `<rank>.npy`: records (`doc`: uint32 index in the rank's
    filtered output, `hashes`: uint64[num_buckets * hashes_per_bucket]) for documents with at least one shingle.

    Exact duplicates are not known yet; `MinhashBucketFiles` drops them after `ExactFindDedups` and writes datatrove's
    bucket files, so the filtered text is read only once more (by the final stage)."""

    type = "🫂 - DEDUP"
    name = "🎯 MinHash signatures (batched)"

    def __init__(self, output_folder: str, config, max_shingles: int = 2048):
        super().__init__()
        self.output_folder = output_folder
        self.config = config
        self.max_shingles = max_shingles  # per batch: a reused (max_shingles, num_hashes) uint64 buffer (1.8 MB)

    def record_dtype(self) -> np.dtype:
        return minhash_record_dtype(self.config)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        a, b = MinhashSignature(self.output_folder, config=self.config).parameters  # (1, num_hashes) each
        out = Path(self.output_folder)
        out.mkdir(parents=True, exist_ok=True)
        chunks, docs, shingles, pending = [], [], [], 0
        buffer = [np.empty((self.max_shingles, a.shape[1]), dtype=np.uint64)]

        def flush():
            if not docs:
                return
            flat = np.fromiter((h for s in shingles for h in s), dtype=np.uint64, count=pending)
            starts = np.cumsum([0] + [len(s) for s in shingles[:-1]])
            if buffer[0].shape[0] < pending:  # a document longer than max_shingles
                buffer[0] = np.empty((pending, a.shape[1]), dtype=np.uint64)
            phv = buffer[0][:pending]  # in place, in a buffer that stays in cache
            with np.errstate(over="ignore"):  # uint64 wraps, as in datatrove's `shingles * a + b`
                np.multiply(flat[:, None], a, out=phv)
                np.add(phv, b, out=phv)
                np.remainder(phv, _MERSENNE_61, out=phv)
            rec = np.empty(len(docs), dtype=self.record_dtype())
            rec["doc"] = docs
            rec["hashes"] = np.minimum.reduceat(phv, starts, axis=0)
            chunks.append(rec)
            docs.clear()
            shingles.clear()

        clock, t0 = time.perf_counter, 0.0
        for doc_idx, doc in enumerate(data):
            t0 -= clock()
            if hashes := ngram_hashes(doc.text, self.config.n_grams):
                docs.append(doc_idx)
                shingles.append(hashes)
                pending += len(hashes)
                if pending >= self.max_shingles:
                    flush()
                    pending = 0
            t0 += clock()
            yield doc
        t0 -= clock()
        flush()
        records = np.concatenate(chunks) if chunks else np.empty(0, dtype=self.record_dtype())
        np.save(out / f"{rank:05d}.npy", records, allow_pickle=False)
        self.stats.time_stats.update(t0 + clock(), unit="task")
        self.stat_update("signatures", value=len(records))


def minhash_record_dtype(config) -> np.dtype:
    return np.dtype([("doc", "<u4"), ("hashes", "<u8", (config.num_buckets * config.hashes_per_bucket,))])


class MinhashBucketFiles(PipelineStep):
    """Turns `MinhashSignatures`' records into datatrove's MinHash stage-1 output for `MinhashDedupBuckets`: the
    rank's exact duplicates (`ExactFindDedups`' `.c4_dup` files) are dropped, document indices renumbered to the
    deduplicated order (as `MinhashDedupFilter` counts them after `ExactDedupFilter`), and each bucket written to
    `bucket_<b>/<rank>.minhash.sig` as records of `hashes_per_bucket` uint64 + uint32 doc index sorted by all fields:
    the bytes `MinhashDedupSignature` writes for the deduplicated documents."""

    type = "🫂 - DEDUP"
    name = "🎯 MinHash stage 1 (bucket files)"

    def __init__(self, signatures_folder: str, exact_dups_folder: str, output_folder: str, config):
        super().__init__()
        self.signatures_folder = signatures_folder
        self.exact_dups_folder = exact_dups_folder
        self.output_folder = output_folder
        self.config = config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        with self.track_time():
            path = Path(self.signatures_folder) / f"{rank:05d}.npy"
            records = np.load(path, allow_pickle=False) if path.is_file() else np.empty(0, minhash_record_dtype(self.config))
            dups = exact_duplicates(self.exact_dups_folder, rank)
            docs = records["doc"].astype(np.int64)
            keep = ~np.isin(docs, dups)
            docs = docs[keep] - np.searchsorted(dups, docs[keep])  # index among the documents ExactDedupFilter keeps
            hashes = records["hashes"][keep]
            per = self.config.hashes_per_bucket
            dtype = np.dtype([(f"field{i + 1}", "<u8") for i in range(per)] + [(f"field{per + 1}", "<u4")])
            out = Path(self.output_folder)
            for bi in range(self.config.num_buckets):
                cols = hashes[:, bi * per:(bi + 1) * per]
                order = np.lexsort((docs, *cols.T[::-1]))  # by hash 1, ..., hash n, doc: datatrove's sort order
                rec = np.empty(len(docs), dtype=dtype)
                for i in range(per):
                    rec[f"field{i + 1}"] = cols[order, i]
                rec[f"field{per + 1}"] = docs[order]
                (out / f"bucket_{bi:03d}").mkdir(parents=True, exist_ok=True)
                rec.tofile(out / f"bucket_{bi:03d}" / f"{rank:05d}.minhash.sig")
            self.stat_update("documents", value=len(docs))
            self.stat_update("exact_duplicates_dropped", value=int((~keep).sum()))


def exact_duplicates(folder: str, rank: int) -> np.ndarray:
    """Sorted indices (int64) of the rank's documents that datatrove's `ExactFindDedups` marked as duplicates (the
    `<folder>/*/<rank>.c4_dup` files `ExactDedupFilter` reads)."""
    from datatrove.utils.typeshelper import ExtensionHelperSD

    files = sorted(Path(folder).glob(f"*/{rank:05d}{ExtensionHelperSD.stage_2_duplicates}"))
    dups = [np.fromfile(f, dtype="<u4") for f in files]
    return np.sort(np.concatenate(dups).astype(np.int64)) if dups else np.empty(0, dtype=np.int64)


def doc_text(doc: Document) -> str:
    """Content getter for datatrove's exact dedup (hashed with sha1, see pipeline._exact_config)."""
    return doc.text


# ---------------------------------------------------------------------------------------------------- PII


class PIIRedactor(BaseFormatter):
    """PII redaction (`vernacular.data.pii`): e-mails, public IPv4/IPv6 addresses, checksum-valid IBANs and phone
    numbers valid for the document language's countries (libphonenumber). Each match becomes a placeholder
    (`<email-pii>`, `<ip-pii>`, `<iban-pii>`, `<phone-pii>`); counts per document go to `metadata["pii"]` for the
    manifest. Replaces datatrove's PIIFormatter, whose patterns take `version 1.2.3.4` for an IP and `python@3.11`
    for an e-mail address."""

    name = "🕵 PII"

    def redact(self, text: str, lang: str | None = None) -> tuple[str, dict[str, int]]:
        return redact(text, lang)

    def format(self, text: str) -> str:
        return redact(text)[0]

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        n = 0
        for n, doc in enumerate(data, 1):
            doc.text, counts = redact(doc.text, doc.metadata.get("lang"))
            if counts:
                doc.metadata["pii"] = dict(counts)
                for kind, k in counts.items():
                    self.stat_update(f"pii_{kind}", value=k)
            yield doc
        add_count(self, "total", n)


# ---------------------------------------------------------------------------------------------------- output


def split_hash(text: str, seed: int) -> float:
    """A uniform number in [0, 1) from the text and the seed."""
    h = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


class SplitAssigner(PipelineStep):
    """Per-language held-out validation split: a seeded hash of the text decides, so the split does not depend on
    the number of tasks, file order or reruns (and identical texts cannot straddle it). A document whose record names
    its split (`"split": "train"|"val"`, as the embedded corpus does, for validation articles aligned across
    languages) keeps it."""

    type = "✂️ - SPLIT"
    name = "🎲 train/val split"

    def __init__(self, val_fraction: float, seed: int = 0):
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.seed = seed

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts = {"train": 0, "val": 0}
        for doc in data:
            if doc.metadata.get("split") not in ("train", "val"):  # records may name their own split (demo corpus)
                doc.metadata["split"] = "val" if split_hash(doc.text, self.seed) < self.val_fraction else "train"
            counts[doc.metadata["split"]] += 1
            yield doc
        for split, n in counts.items():
            add_count(self, split, n)


class KeptWriter(JsonlWriter):
    """Cleaned documents: `text/<split>/<lang>/<rank>.jsonl.gz` (datatrove's JSONL layout). The file name depends on
    split, language and rank only, so it is worked out once per combination rather than twice per document."""

    def __init__(self, text_dir: str):
        super().__init__(text_dir, output_filename="${split}/${lang}/${rank}.jsonl.gz", adapter=document_dict,
                         compression=GZIP6)
        self._names: dict[tuple, str] = {}

    def _get_output_filename(self, document: Document, rank: int | str = 0, **kwargs) -> str:
        if kwargs:
            return super()._get_output_filename(document, rank, **kwargs)
        key = (document.metadata.get("split"), document.metadata.get("lang"), rank)
        if (name := self._names.get(key)) is None:
            name = self._names[key] = super()._get_output_filename(document, rank)
        return name


def kept_writer(text_dir: str) -> JsonlWriter:
    """Cleaned documents: `text/<split>/<lang>/<rank>.jsonl.gz` (datatrove's JSONL layout)."""
    return KeptWriter(text_dir)
