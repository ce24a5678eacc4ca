"""Train and save the tokenizer: NFC -> byte-level BPE, with our special tokens first.

`plain` is HF tokenizers' own BpeTrainer on the balanced sample (the baseline); `parity` is our parity-aware merge
loop (bpe.py) on the same sample. Both end in the same standard `tokenizer.json` (a BPE model with vocab + merges),
saved with a `tokenizer_config.json` that transformers' `AutoTokenizer` / `PreTrainedTokenizerFast` read.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from vernacular.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS
from vernacular.tokenizer.corpus import Corpus


@dataclass
class TokenizerConfig:
    vocab_size: int = 32000
    method: str = "parity"  # "plain" | "parity"
    min_frequency: int = 2
    model_max_length: int = 2048
    parity_dev: str | None = None  # parity: multi-parallel dev folder that steers merges (None: the shipped one)
    warmup: int = 0  # parity: merges by global frequency before steering starts
    target: float = 1.27  # parity: steer while the worst language's dev premium exceeds this
    share: float = 2.0  # parity: weight of the other languages' counts when ranking the worst language's pairs
    reference: str = "eng"  # parity: premium is measured against this language (the best one if absent)
    seed: int = 0


def skeleton():
    """An empty tokenizer with our normalizer, pre-tokenizer and decoder; the BPE model is filled in by training."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _train_plain(corpus: Corpus, cfg: TokenizerConfig):
    from tokenizers import pre_tokenizers, trainers

    tok = skeleton()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    docs = [d for lang in corpus.langs for d in corpus.train[lang]]
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok, {}


# GPT-2's pre-tokenization regex, as HF tokenizers' ByteLevel(use_regex=True) applies it
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_level_table() -> dict[int, str]:
    """GPT-2's bytes -> printable characters map (`bytes_to_unicode`), the one HF's ByteLevel uses."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}


def count_words(docs: list[str]) -> Counter:
    """Pre-tokenized word types with counts, exactly as `skeleton()` (NFC + ByteLevel) splits text at encode time.

    The split runs in C (the `regex` module with GPT-2's pattern, on each NFC-normalised document) and only the
    distinct words are mapped to byte-level symbols: ~5x faster than calling HF's pre-tokenizer per document.
    `test_tokenizer.py` checks the counts equal HF's own pre-tokenizer's.
    """
    import unicodedata

    import regex

    split = regex.compile(_GPT2_SPLIT).findall
    raw: Counter = Counter()
    for doc in docs:
        raw.update(split(unicodedata.normalize("NFC", doc)))
    table = {chr(b): c for b, c in _byte_level_table().items()}
    trans = str.maketrans(table)
    counts: Counter = Counter()
    for word, c in raw.items():
        counts[word.encode().decode("latin-1").translate(trans)] += c
    return counts


def _train_parity(corpus: Corpus, cfg: TokenizerConfig, progress: bool = True):
    from tokenizers import models, pre_tokenizers

    from vernacular.tokenizer.bpe import ParityBPEConfig, train_parity_bpe

    tok = skeleton()
    train_words = {lang: count_words(corpus.train[lang]) for lang in corpus.langs}
    # the dev set is multi-parallel (the same sentences in every language), so raw token counts compare
    dev_words = {lang: count_words(lines) for lang, lines in corpus.dev.items()}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    bpe_cfg = ParityBPEConfig(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, warmup=cfg.warmup,
                              target=cfg.target, reference=cfg.reference, share=cfg.share)
    learned, merges, stats = train_parity_bpe(train_words, dev_words, alphabet, len(SPECIAL_TOKENS), bpe_cfg,
                                              progress=progress)
    stats["parity_dev"] = corpus.dev_name
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + alphabet + learned)}
    if len(vocab) != len(SPECIAL_TOKENS) + len(alphabet) + len(learned):
        raise RuntimeError("duplicate token in learned vocabulary")  # a merge loop bug, never a user error
    tok.model = models.BPE(vocab=vocab, merges=merges)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok, stats


def train_tokenizer(corpus: Corpus, cfg: TokenizerConfig, progress: bool = True):
    """Returns (tokenizers.Tokenizer, stats dict)."""
    if cfg.method not in ("plain", "parity"):
        raise ValueError(f"unknown tokenizer method {cfg.method!r} (expected plain or parity)")
    if cfg.vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size {cfg.vocab_size} is below the {len(SPECIAL_TOKENS) + 256} special + byte tokens")
    t0 = time.perf_counter()
    tok, stats = (_train_plain(corpus, cfg) if cfg.method == "plain" else _train_parity(corpus, cfg, progress))
    for i, s in enumerate(SPECIAL_TOKENS):  # an interface other stages rely on
        if tok.token_to_id(s) != i:
            raise RuntimeError(f"special token {s} got id {tok.token_to_id(s)}, expected {i}")
    stats = {"method": cfg.method, "vocab_size": tok.get_vocab_size(), "train_seconds": round(time.perf_counter() - t0, 2),
             "train_bytes": corpus.train_bytes(), "languages": corpus.langs, **stats}
    return tok, stats


def save_tokenizer(tok, out_dir: str | Path, cfg: TokenizerConfig) -> Path:
    """tokenizer.json + tokenizer_config.json (+ chat template) + special_tokens_map.json, each written atomically."""
    from vernacular.run import atomic_write_bytes, write_json
    from vernacular.tokenizer.chat import CHAT_TEMPLATE

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "tokenizer.json", tok.to_str(pretty=True).encode())
    added = {
        str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        for i, s in enumerate(SPECIAL_TOKENS)
    }
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": SPECIAL_TOKENS[3:],
        "added_tokens_decoder": added,
        "model_max_length": cfg.model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
    })
    write_json(out / "special_tokens_map.json", {
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "additional_special_tokens": SPECIAL_TOKENS[3:],
    })
    return out / "tokenizer.json"


def config_dict(cfg: TokenizerConfig) -> dict:
    return asdict(cfg)
