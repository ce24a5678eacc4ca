"""Language identification: py3langid's model and decision rule, with its feature extraction vectorised in numpy.

py3langid (langid.py's naive Bayes over byte n-grams; Lui & Baldwin, 2012) finds its features with a DFA walked one
byte at a time in Python (`py3langid.langid.visit_counts`), about 85 % of its time on a news sentence. That DFA is an
Aho-Corasick automaton over the feature trie: after each byte its state is the longest suffix of the bytes read so
far that is a trie node (checked on every one of the model's 104,583 x 256 transitions when this module was written;
`tests/test_langid.py` checks the counts against py3langid's own walk). Trie nodes are at most 6 bytes long, so the
state after byte i is found without walking: look up the suffixes of length 6, 5, ..., 1 ending at i among the nodes
of that length (`np.searchsorted`) and keep the longest hit. The scores are py3langid's (`_encode`, its sparse
naive-Bayes product with the features in the order its `Counter` gives them, its float32 softmax), so they are
bit-identical to py3langid's; `probabilities` runs the softmax of a whole batch as one matrix.

The restricted model and the suffix tables are cached as an uncompressed .npz (`cache_path`): building them from
py3langid's LZMA-compressed model takes ~1.3 s in every process that identifies languages, loading ~0.03 s.

    ident = identifier(("deu", "fra"))        # cached per language set, ISO 639-3 codes
    ident.rank("Guten Morgen")                # [('de', p), ('fr', p)] py3langid labels, best first

The model ships inside py3langid's wheel (nothing is downloaded).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from functools import lru_cache
from importlib.metadata import version
from itertools import pairwise
from pathlib import Path

import numpy as np
from py3langid.langid import MODEL_DIR, MODEL_FILE, RAW_FLOOR, LanguageIdentifier

from vernacular.cache import UNREADABLE, cache_dir, save_arrays
from vernacular.data.languages import LANGID_LABEL


class VectorizedIdentifier(LanguageIdentifier):
    """py3langid's LanguageIdentifier whose feature extraction runs in numpy (same features, counts and scores)."""

    __slots__ = ["_direct", "_keys", "_max_len", "_out", "_states"]

    @classmethod
    def from_model_file(cls, model_file=MODEL_FILE, *args, **kwargs) -> VectorizedIdentifier:
        ident = super().from_model_file(model_file, *args, **kwargs)
        ident._build_suffix_tables()
        return ident

    def _build_suffix_tables(self) -> None:
        """Every DFA state's byte string (breadth-first over the transitions: a transition from depth d to depth d+1
        appends its byte), as per-length sorted uint64 keys (the bytes, big-endian) next to their state ids."""
        nextmove = np.frombuffer(self.tk_nextmove, dtype=np.dtype(self.tk_nextmove.typecode))
        rows = np.frombuffer(self.tk_row, dtype=np.dtype(self.tk_row.typecode)).astype(np.int64)
        n_states = len(rows)
        depth = np.full(n_states, -1, dtype=np.int64)
        key = np.zeros(n_states, dtype=np.uint64)
        depth[0], frontier = 0, np.array([0])
        table = nextmove.reshape(-1, 256)
        while frontier.size:
            nxt = table[rows[frontier]].astype(np.int64)  # (frontier, 256)
            new = depth[nxt] < 0
            parent, byte = np.nonzero(new)
            child = nxt[parent, byte]
            child, first = np.unique(child, return_index=True)
            parent, byte = frontier[parent[first]], byte[first]
            depth[child] = depth[parent] + 1
            key[child] = (key[parent] << np.uint64(8)) | byte.astype(np.uint64)
            frontier = child
        if (depth < 0).any():
            raise ValueError("py3langid model: unreachable DFA states")
        self._max_len = int(depth.max())
        self._keys, self._states = [], []
        for length in range(1, self._max_len + 1):
            ids = np.nonzero(depth == length)[0]
            order = np.argsort(key[ids])
            self._keys.append(key[ids][order])
            self._states.append(ids[order])
        self._out = np.asarray(self.tk_output, dtype=np.int64)
        self._direct = []  # lengths 1 and 2: state id by the bytes' value, -1 where no node
        for length, size in ((1, 256), (2, 65536)):
            table = np.full(size, -1, dtype=np.int64)
            table[self._keys[length - 1].astype(np.int64)] = self._states[length - 1]
            self._direct.append(table)

    def feature_counts(self, texts: list[bytes]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per UTF-8 text: (feature ids, counts), features in order of first occurrence (as `visit_counts`'s Counter
        gives them); shapes (k,), (k,), k = 0 when no feature occurs. The texts are processed as one byte array
        (suffixes never cross a text's start), so a batch costs a few numpy calls in all."""
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        data = np.frombuffer(b"".join(texts), dtype=np.uint8)
        n = data.size
        doc = np.repeat(np.arange(len(texts)), lengths)
        offset = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position within its text
        # node[L - 1, j]: the state whose string is the L bytes from j (-1: not a trie node, or crosses a text end).
        # The trie is prefix-closed, so length L is looked up only where length L - 1 was a node.
        node = np.full((self._max_len, n), -1, dtype=np.int64)
        node[0] = self._direct[0][data]
        if n > 1:
            pair = (data[:-1].astype(np.int64) << 8) | data[1:]
            node[1, :-1] = np.where(offset[1:] > 0, self._direct[1][pair], -1)
        start = np.nonzero(node[1] >= 0)[0]
        window = pair[start].astype(np.uint64) if n > 1 else np.zeros(0, dtype=np.uint64)
        for length in range(3, self._max_len + 1):
            start = start[start + length - 1 < n]
            window = window[: start.size]
            fits = offset[start + length - 1] >= length - 1  # same text
            start, window = start[fits], window[fits]
            window = (window << np.uint64(8)) | data[start + length - 1].astype(np.uint64)
            keys = self._keys[length - 1]
            pos = np.searchsorted(keys, window)
            pos[pos == keys.size] = 0
            hit = keys[pos] == window
            start, window = start[hit], window[hit]
            node[length - 1, start] = self._states[length - 1][pos[hit]]
        # the state after byte e: the longest node ending at e (Aho-Corasick), else the root
        state = np.zeros(n, dtype=np.int64)
        found = np.zeros(n, dtype=bool)
        for length in range(min(self._max_len, n), 0, -1):
            end = np.arange(length - 1, n)
            ids = node[length - 1, : n - length + 1]
            take = (ids >= 0) & ~found[end]
            state[end[take]] = ids[take]
            found[end[take]] = True
        features = self._out[state]
        keep = features >= 0
        key = doc[keep] * self._out.size + features[keep]
        uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
        order = np.argsort(first, kind="stable")  # texts in order, features by first occurrence within each
        uniq, counts = uniq[order], counts[order]
        bounds = np.searchsorted(uniq // self._out.size, np.arange(len(texts) + 1))
        ids = uniq % self._out.size
        return [(ids[a:b], counts[a:b]) for a, b in pairwise(bounds)]

    def _raw_score(self, text: bytes):
        ids, counts = self.feature_counts([text])[0]
        if ids.size:
            return np.log1p(counts.astype(np.float32)) @ self.nb_ptc[ids] + self.nb_pc
        # py3langid's no-feature fill
        return np.full(len(self.nb_classes), 0.0 if self._norm_probs else RAW_FLOOR, dtype=np.float32)

    def save(self, path: Path) -> None:
        """Everything `load` needs (the restricted model and the suffix tables, ~13 MB for 30 languages) as one
        uncompressed .npz, written atomically."""
        arrays = {"nb_ptc": self.nb_ptc, "nb_pc": self.nb_pc, "nb_classes": np.array(self.nb_classes),
                  "norm_probs": np.array(self._norm_probs), "_out": self._out, "_direct1": self._direct[0],
                  "_direct2": self._direct[1]}
        for length, (keys, states) in enumerate(zip(self._keys, self._states), 1):
            arrays[f"keys{length}"], arrays[f"states{length}"] = keys, states
        save_arrays(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> VectorizedIdentifier:
        """An identifier from `save`'s file (no pickle). It has no byte DFA, so it scores only through
        `feature_counts` (all of this class's methods do) and cannot `set_languages` beyond its own."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        ident = cls.__new__(cls)
        ident.min_confidence = None
        ident.nb_ptc, ident.nb_pc = arrays["nb_ptc"], arrays["nb_pc"]
        ident.nb_classes = arrays["nb_classes"].tolist()
        ident.tk_nextmove = ident.tk_row = ident._rowbase = None
        ident._out = arrays["_out"]
        ident.tk_output = ident._out.tolist()
        ident._norm_probs = bool(arrays["norm_probs"])
        ident._full_model = ident.nb_ptc, ident.nb_pc, ident.nb_classes
        ident._set_alias_pairs()
        ident._direct = [arrays["_direct1"], arrays["_direct2"]]
        ident._max_len = sum(1 for k in arrays if k.startswith("keys"))
        ident._keys = [arrays[f"keys{n}"] for n in range(1, ident._max_len + 1)]
        ident._states = [arrays[f"states{n}"] for n in range(1, ident._max_len + 1)]
        return ident

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """py3langid's `_decide` for a batch: (len(texts), len(nb_classes)) float32 normalised probabilities (the
        identifier must be built with `norm_probs=True`); an aliased label's later column is folded into its first
        and zeroed. Features are extracted for the whole batch at once and the softmax runs over the whole matrix,
        with py3langid's float32 operations, so each row equals `_decide(text)` bit for bit."""
        if not self._norm_probs:
            raise ValueError("probabilities() needs an identifier built with norm_probs=True")
        encoded = [self._encode(t) for t in texts]
        scores = np.zeros((len(texts), len(self.nb_classes)), dtype=np.float32)  # no features: 0.0 (uniform)
        for row, (ids, counts) in zip(scores, self.feature_counts(encoded)):
            if ids.size:
                row[:] = np.log1p(counts.astype(np.float32)) @ self.nb_ptc[ids] + self.nb_pc
        # T = sqrt(bytes), as py3langid (its Python-float factor is applied in float32)
        scores *= np.array([1.0 / math.sqrt(len(t) or 1) for t in encoded], dtype=np.float32)[:, None]
        np.exp(scores - scores.max(axis=1, keepdims=True), out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        for i, j in self._alias_pairs:
            scores[:, i] += scores[:, j]
            scores[:, j] = 0.0
        return scores

    def rank_batch(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        """`rank` of each text (py3langid labels and normalised probabilities, best first, one entry per label)."""
        first = [i for i, c in enumerate(self.nb_classes) if i == self.nb_classes.index(c)]
        labels = [self.nb_classes[i] for i in first]
        out = []
        for row in self.probabilities(texts)[:, first]:
            order = np.argsort(-row, kind="stable")  # sorted(..., reverse=True) keeps ties in label order
            values = row.tolist()
            out.append([(labels[k], values[k]) for k in order.tolist()])
        return out


CACHE_FORMAT = 1  # bump when what `save` writes changes


def cache_path(labels: tuple[str, ...] | None) -> Path:
    """Where the identifier for `labels` is cached: `$VERNACULAR_CACHE` (default `$XDG_CACHE_HOME/vernacular`,
    `~/.cache/vernacular`) `/langid/<key>.npz`, the key a hash of py3langid's version, its model file (path, size,
    mtime), the labels and `CACHE_FORMAT`, so a new model or code never reads an old table."""
    model = Path(MODEL_FILE) if Path(MODEL_FILE).is_absolute() else MODEL_DIR / MODEL_FILE
    stat = model.stat()
    key = repr((version("py3langid"), str(model), stat.st_size, stat.st_mtime_ns, labels, CACHE_FORMAT))
    return cache_dir("langid") / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


@lru_cache(maxsize=8)
def _identifier(labels: tuple[str, ...] | None) -> VectorizedIdentifier:
    """Loaded from the cache when there (~0.05 s), else built from py3langid's model (~1.3 s: LZMA-decompressing
    68 MB and the suffix tables) and cached; a cache that cannot be read or written is only skipped."""
    path = cache_path(labels)
    try:
        return VectorizedIdentifier.load(path)
    except UNREADABLE:
        pass
    ident = VectorizedIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages(list(labels) if labels else None)
    try:
        ident.save(path)
    except OSError:
        pass
    return ident


def identifier(languages: Iterable[str] | None = None) -> VectorizedIdentifier:
    """The normalised-probability identifier restricted to `languages` (ISO 639-3 codes of `LANGID_LABEL`; None: all
    of py3langid's). Built once per process and language set (~1 s: model load and suffix tables)."""
    labels = tuple(sorted({LANGID_LABEL[code] for code in languages})) if languages is not None else None
    return _identifier(labels)
