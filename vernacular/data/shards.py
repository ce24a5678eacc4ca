"""Tokenized shards in datatrove's tokenized-file format, one file per split and language.

    tokens/meta.json                    tokenizer, special ids, per split and language: documents, tokens, bytes
    tokens/<split>/<lang>.ds            flat little-endian uint32 token ids (token_size 4), documents back to back,
                                        each wrapped as BOS + text + EOS
    tokens/<split>/<lang>.ds.index      little-endian uint64 cumulative document ends (in tokens)
    tokens/<split>/<lang>.ds.metadata   `<tokenizer>|4`, token count, human-readable count (datatrove's text file)

This is exactly what datatrove's `DocumentTokenizer` writes and its `DatatroveFolderDataset(..., token_size=4)` reads
(nanotron and other trainers read it too). The train split is written in its temperature-sampled mix: a language
with target share p_l ∝ n_l^alpha is repeated (whole shuffled passes, then a seeded subset) or subsampled to reach
p_l of the natural total. Validation stays natural: one file per language, never resampled.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vernacular.data.manifest import temperature_weights
from vernacular.data.text import iter_records, iter_texts, text_languages
from vernacular.run import RunDir, read_json, write_json

FORMAT = "datatrove-tokenized/uint32"
BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "[BOS]")
EOS_CANDIDATES = ("<|end_of_text|>", "</s>", "<eos>", "[EOS]", "<|endoftext|>")
ENCODE_BATCH = 1024


def special_ids(tokenizer, tokenizer_path: Path) -> tuple[int, int, str, str]:
    """BOS/EOS from tokenizer_config.json next to tokenizer.json when present, else the usual names in the vocab."""
    config = Path(tokenizer_path).with_name("tokenizer_config.json")
    names: dict[str, str | None] = {"bos": None, "eos": None}
    if config.exists():
        cfg = read_json(config)
        for key in names:
            tok = cfg.get(f"{key}_token")
            names[key] = tok.get("content") if isinstance(tok, dict) else tok
    for key, candidates in (("bos", BOS_CANDIDATES), ("eos", EOS_CANDIDATES)):
        if names[key] is None or tokenizer.token_to_id(names[key]) is None:
            names[key] = next((c for c in candidates if tokenizer.token_to_id(c) is not None), None)
        if names[key] is None:
            raise ValueError(f"{tokenizer_path} has no {key.upper()} token (looked for {candidates})")
    return tokenizer.token_to_id(names["bos"]), tokenizer.token_to_id(names["eos"]), names["bos"], names["eos"]


def _tokenize_language(tokenizer, run: RunDir, split: str, lang: str, bos: int, eos: int, pbar,
                       per_source: dict) -> tuple[list, int]:
    docs, nbytes, batch, sources = [], 0, [], []

    def flush():
        for enc, source in zip(tokenizer.encode_batch(batch, add_special_tokens=False), sources):
            docs.append(np.asarray([bos, *enc.ids, eos], dtype=np.uint32))
            key = (source, lang)
            per_source.setdefault(key, {"train": 0, "val": 0})[split] += len(docs[-1])
        pbar.update(len(batch))
        batch.clear()
        sources.clear()

    for _, record in iter_records(run, split, [lang]):
        batch.append(record["text"])
        sources.append(record.get("metadata", {}).get("source", "?"))
        nbytes += len(record["text"].encode("utf-8"))
        if len(batch) >= ENCODE_BATCH:
            flush()
    if batch:
        flush()
    return docs, nbytes


def _write_ds(path: Path, docs: list[np.ndarray], tokenizer_name: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint32)
    ends = np.cumsum([len(d) for d in docs], dtype=np.uint64) if docs else np.zeros(0, dtype=np.uint64)
    tmp = path.with_name(path.name + ".tmp")
    tokens.astype("<u4").tofile(tmp)
    os.replace(tmp, path)
    ends.astype("<u8").tofile(path.with_name(path.name + ".index"))
    path.with_name(path.name + ".metadata").write_text(f"{tokenizer_name}|4\n{len(tokens)}\n{len(tokens)} T")
    return int(len(tokens))


def mix_order(doc_tokens: list[int], target_tokens: float, rng: np.random.Generator) -> list[int]:
    """Document indices reaching ~target_tokens: whole shuffled passes, then a shuffled prefix of one more pass."""
    total = sum(doc_tokens)
    if total == 0 or target_tokens <= 0:
        return []
    order: list[int] = []
    full, rest = divmod(round(target_tokens), total)  # whole tokens: (n / total) * total must not exceed n
    for _ in range(int(full)):
        order.extend(rng.permutation(len(doc_tokens)).tolist())
    acc = 0
    for i in rng.permutation(len(doc_tokens)).tolist():
        if acc >= rest:
            break
        order.append(i)
        acc += doc_tokens[i]
    return order


def write_shards(run_dir: str | os.PathLike | RunDir, tokenizer_path: str | os.PathLike, *, alpha: float | None = None,
                 seed: int | None = None) -> dict:
    """Tokenize the run's train and val text into RunDir.tokens (layout in the module docstring); return meta.json's
    content and add token counts to the manifest. alpha and seed default to the data stage's (run.toml), else 0.3, 0:
    `vernacular data --alpha 0.5` followed by `vernacular tokenizer` keeps the 0.5 mix."""
    from tokenizers import Tokenizer

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    data_cfg = run.read_config().get("data", {})
    alpha = float(data_cfg.get("alpha", 0.3)) if alpha is None else alpha
    seed = int(data_cfg.get("seed", 0)) if seed is None else seed
    tokenizer_path = Path(tokenizer_path)
    if tokenizer_path.is_dir():
        tokenizer_path = tokenizer_path / "tokenizer.json"
    if not tokenizer_path.exists():
        raise FileNotFoundError(f"tokenizer {tokenizer_path} not found")
    run.require(run.text, "data")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    bos, eos, bos_s, eos_s = special_ids(tokenizer, tokenizer_path)
    name = str(tokenizer_path)

    meta = {"format": FORMAT, "token_size": 4, "dtype": "uint32", "tokenizer": name,
            "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True), "bos_id": bos, "eos_id": eos,
            "bos_token": bos_s, "eos_token": eos_s, "alpha": alpha, "seed": seed, "splits": {}, "totals": {}}
    n_docs = sum(1 for split in ("train", "val") for _ in iter_texts(run, split))
    per_source: dict[tuple[str, str], dict[str, int]] = {}
    with tqdm(total=n_docs, desc="tokenizing", unit="doc") as pbar:
        tokenized = {split: {lang: _tokenize_language(tokenizer, run, split, lang, bos, eos, pbar, per_source)
                             for lang in text_languages(run, split)} for split in ("train", "val")}

    tmp_root = run.tokens.with_name("tokens.tmp")
    shutil.rmtree(tmp_root, ignore_errors=True)
    # train: temperature mix over the natural token counts
    natural = {lang: sum(len(d) for d in docs) for lang, (docs, _) in tokenized["train"].items()}
    weights = temperature_weights(natural, alpha)
    total = sum(natural.values())
    train_meta = {}
    for lang, (docs, nbytes) in sorted(tokenized["train"].items()):
        rng = np.random.default_rng([seed, sorted(natural).index(lang)])
        order = mix_order([len(d) for d in docs], weights.get(lang, 0.0) * total, rng)
        n_tok = _write_ds(tmp_root / "train" / f"{lang}.ds", [docs[i] for i in order], name)
        train_meta[lang] = {"documents": len(docs), "documents_sampled": len(order), "tokens_natural": natural[lang],
                            "tokens": n_tok, "bytes": nbytes, "weight": weights.get(lang, 0.0),
                            "repeat_factor": n_tok / natural[lang] if natural[lang] else 0.0}
    val_meta = {}
    for lang, (docs, nbytes) in sorted(tokenized["val"].items()):
        n_tok = _write_ds(tmp_root / "val" / f"{lang}.ds", docs, name)
        val_meta[lang] = {"documents": len(docs), "tokens": n_tok, "bytes": nbytes,
                          "bytes_per_token": nbytes / n_tok if n_tok else 0.0}
    meta["splits"] = {"train": train_meta, "val": val_meta}
    meta["totals"] = {split: sum(v["tokens"] for v in m.values()) for split, m in meta["splits"].items()}
    write_json(tmp_root / "meta.json", meta)
    shutil.rmtree(run.tokens, ignore_errors=True)
    os.replace(tmp_root, run.tokens)

    if run.manifest.exists():
        manifest = read_json(run.manifest)
        manifest["tokens"] = {"tokenizer": name, "train": train_meta, "val": val_meta, "totals": meta["totals"]}
        manifest["mix"] = {"alpha": alpha, "basis": "train tokens", "weights": weights}
        for (source, lang), counts in per_source.items():
            entry = manifest["sources"].get(source, {}).get("languages", {}).get(lang)
            if entry is not None:
                entry["tokens"] = counts
        write_json(run.manifest, manifest)
    return meta
