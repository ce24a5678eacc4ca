"""Parity-aware byte-pair encoding (Foroutan et al. 2025), a hybrid with plain frequency BPE.

Plain BPE merges the pair that is most frequent in the whole corpus, so languages that share many pairs (Latin-script
languages, English first) get most merges and languages with their own script or long words pay more tokens for the
same sentence. Parity-aware BPE tracks each language's token count on a held-out dev slice while it trains; at each
step it takes the most frequent pair *of the language that currently compresses worst*. Ours is a hybrid: the first
`warmup` merges and every step where the worst language is within `target` of the best-compressed one take the global
most frequent pair, the others the worst language's. The target bounds the premium we aim for; the global steps keep
English (and everyone's) compression close to plain BPE.

The loop is the classic incremental one (as in HF tokenizers' Rust trainer): word types with counts, pair counts and
a pair -> words index updated only for the words a merge touches, and lazy max-heaps (one global, one per language)
whose stale entries are re-pushed on pop. Pair counts of existing pairs only ever go down, so a popped entry whose
count is current is the true maximum.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass

from tqdm import tqdm

SHIFT = 1 << 20  # pair (a, b) is the int a * SHIFT + b: faster to hash than a tuple; vocabularies stay < 1 M


@dataclass
class ParityBPEConfig:
    vocab_size: int = 32000  # including special tokens and the 256 byte symbols
    min_frequency: int = 2
    warmup: int = 0  # merges taken by global frequency before parity steering starts
    target: float = 1.0  # steer only while worst/best dev compression ratio exceeds this (1.0 = always steer)
    reference: str | None = "eng"  # premium is measured against this language (else against the best one)
    share: float = 0.0  # steered steps rank the worst language's pairs by its count + share * mean count per language


@dataclass(slots=True)
class _Word:
    symbols: list[int]
    train: list[tuple[int, int]]  # (language index, count in training text)
    dev: list[tuple[int, int]]  # (language index, count in dev text)
    total: int = 0  # count in training text, all languages


def _pairs(symbols: list[int]):
    return [symbols[i] * SHIFT + symbols[i + 1] for i in range(len(symbols) - 1)]


def train_parity_bpe(train_words: dict[str, Counter], dev_words: dict[str, Counter], alphabet: list[str],
                     n_special: int, config: ParityBPEConfig, progress: bool = True) -> tuple[list[str], list[tuple[str, str]], dict]:
    """Learn merges on pre-tokenized words (byte-level strings) per language.

    train_words / dev_words: lang -> Counter(word -> count). The dev text must be multi-parallel (the same sentences in
    every language), so raw token counts compare; training languages without dev text are never steered for.
    Returns (tokens in id order after the specials, merges, stats).
    """
    langs = sorted(train_words)
    lang_index = {lang: i for i, lang in enumerate(langs)}
    ref = lang_index.get(config.reference) if config.reference else None

    id2tok = list(alphabet)
    tok2id = {t: i for i, t in enumerate(id2tok)}

    # word types over train and dev text, with per-language counts
    table: dict[str, _Word] = {}
    for lang in langs:
        li = lang_index[lang]
        for source, attr in ((train_words, "train"), (dev_words, "dev")):
            for word, count in sorted(source.get(lang, {}).items()):
                w = table.get(word)
                if w is None:
                    try:
                        w = table[word] = _Word([tok2id[ch] for ch in word], [], [])
                    except KeyError as e:
                        raise ValueError(f"symbol {e} of word {word!r} is not in the byte-level alphabet") from e
                getattr(w, attr).append((li, count))
    words = list(table.values())
    del table
    for w in words:
        w.total = sum(c for _, c in w.train)

    counts: dict[int, int] = {}
    lcounts: list[dict[int, int]] = [dict() for _ in langs]
    where: dict[int, set[int]] = {}
    dev_tokens = [0.0] * len(langs)
    for wi, w in enumerate(words):
        for li, c in w.dev:
            dev_tokens[li] += len(w.symbols) * c
        total = w.total
        for p in _pairs(w.symbols):
            where.setdefault(p, set()).add(wi)
            if total:
                counts[p] = counts.get(p, 0) + total
                for li, c in w.train:
                    lc = lcounts[li]
                    lc[p] = lc.get(p, 0) + c
    steerable = [i for i in range(len(langs)) if dev_tokens[i] > 0]  # languages with dev text
    if ref not in steerable:
        ref = None
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    share = config.share / len(langs)

    def lscore(lc: dict[int, int], p: int) -> float:
        # both counts only ever fall for an existing pair, so the score does too and the lazy heap stays valid
        c = lc.get(p, 0)
        return c + share * counts.get(p, 0) if c > 0 else 0

    lheaps = []
    for lc in lcounts:
        h = [(-lscore(lc, p), p) for p in lc]
        heapq.heapify(h)
        lheaps.append(h)

    def pop_best(h: list, score) -> int | None:
        while h:
            negc, p = h[0]
            current = score(p)
            if -negc == current:
                return p if current > 0 and counts.get(p, 0) >= config.min_frequency else None
            heapq.heappop(h)
            if current > 0:
                heapq.heappush(h, (-current, p))
        return None

    n_merges = max(0, config.vocab_size - n_special - len(alphabet))
    merges: list[tuple[str, str]] = []
    steered = 0
    steered_by_lang = Counter()
    bar = tqdm(total=n_merges, desc="parity-aware BPE merges", unit="merge", disable=not progress, mininterval=1.0)
    exhausted: set[int] = set()  # languages with no pair left at min_frequency: steering skips them
    while len(merges) < n_merges:
        pair = None
        if steerable and len(merges) >= config.warmup:
            base = dev_tokens[ref] if ref is not None else min(dev_tokens[i] for i in steerable)
        while pair is None and len(merges) >= config.warmup and len(exhausted) < len(steerable):
            worst = max((i for i in steerable if i not in exhausted), key=lambda i: dev_tokens[i])
            if dev_tokens[worst] / base <= config.target:
                break
            lc = lcounts[worst]
            pair = pop_best(lheaps[worst], lambda p: lscore(lc, p))
            if pair is None:
                exhausted.add(worst)
            else:
                steered += 1
                steered_by_lang[langs[worst]] += 1
        if pair is None:
            pair = pop_best(heap, lambda p: counts.get(p, 0))
        if pair is None:
            break  # nothing left that occurs min_frequency times
        a, b = divmod(pair, SHIFT)
        new = len(id2tok)
        id2tok.append(id2tok[a] + id2tok[b])
        merges.append((id2tok[a], id2tok[b]))

        born: set[int] = set()  # pairs this merge creates: they all contain `new`, the only ones whose count grows
        lborn: list[set[int]] = [set() for _ in langs]
        for wi in where.pop(pair, ()):
            w = words[wi]
            sym = w.symbols
            n = len(sym)
            out: list[int] = []
            i = 0
            while i < n:
                if i < n - 1 and sym[i] == a and sym[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            if len(out) == n:
                continue  # stale index entry
            local: dict[int, int] = {}
            for p in _pairs(sym):
                local[p] = local.get(p, 0) - 1
            for p in _pairs(out):
                local[p] = local.get(p, 0) + 1
            w.symbols = out
            shrink = n - len(out)
            for li, c in w.dev:
                dev_tokens[li] -= shrink * c
            total = w.total
            for p, d in local.items():
                if d == 0:
                    continue
                if d > 0:
                    where.setdefault(p, set()).add(wi)
                if not total:
                    continue
                # counts are updated in place: old pairs only fall and new ones only grow, so none crosses zero twice
                c = counts.get(p, 0) + d * total
                if c > 0:
                    counts[p] = c
                else:
                    counts.pop(p, None)
                if d > 0:
                    born.add(p)
                for li, cl in w.train:
                    lc = lcounts[li]
                    c = lc.get(p, 0) + d * cl
                    if c > 0:
                        lc[p] = c
                    else:
                        lc.pop(p, None)
                    if d > 0:
                        lborn[li].add(p)
        for p in sorted(born):
            heapq.heappush(heap, (-counts[p], p))
        for li, ps in enumerate(lborn):
            lc = lcounts[li]
            for p in sorted(ps):
                heapq.heappush(lheaps[li], (-lscore(lc, p), p))
        counts.pop(pair, None)
        for lc in lcounts:
            lc.pop(pair, None)
        bar.update(1)
    bar.close()
    base = (dev_tokens[ref] if ref is not None else min(dev_tokens[i] for i in steerable)) if steerable else 0
    stats = {
        "merges": len(merges),
        "steered_merges": steered,
        "steered_by_language": dict(sorted(steered_by_lang.items(), key=lambda kv: -kv[1])),
        "dev_premium": {langs[i]: round(dev_tokens[i] / base, 4) for i in steerable} if base else {},
        "dev_tokens": {lang: int(dev_tokens[i]) for i, lang in enumerate(langs)},
    }
    return id2tok[len(alphabet):], merges, stats
