"""Token shards: datatrove's tokenized layout (read back by datatrove itself), BOS/EOS wrapping, temperature mix."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from vernacular.data.demo_corpus import demo_lines
from vernacular.data.manifest import temperature_weights
from vernacular.data.shards import mix_order, write_shards
from vernacular.run import RunDir, read_json, write_json

SIZES = {"deu": 300, "fin": 120, "ell": 40}  # lines per language: a skewed mix


def write_text(run: RunDir, split: str, lang: str, texts: list[str]) -> None:
    folder = run.text / split / lang
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "00000.jsonl.gz", "wt", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "id": f"{lang}/{i}", "metadata": {"source": "ntrex128", "lang": lang}}) + "\n")


def train_tokenizer(path: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return path


def make_run(root: Path) -> tuple[RunDir, Path]:
    run = RunDir(root / "run")
    all_texts = []
    for lang, n in SIZES.items():
        lines = demo_lines(lang)
        write_text(run, "train", lang, lines[:n])
        write_text(run, "val", lang, lines[n:n + 20])
        all_texts += lines[:n]
    write_json(run.manifest, {"sources": {"ntrex128": {"languages": {l: {} for l in SIZES}}}})
    run.tokenizer.mkdir(parents=True)
    return run, train_tokenizer(run.tokenizer / "tokenizer.json", all_texts)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    run, tok = make_run(tmp_path_factory.mktemp("shards"))
    meta = write_shards(run, tok, alpha=0.3, seed=0)
    return run, tok, meta


def test_layout_is_datatrove_tokenized_format(shards):
    run, tok, meta = shards
    from datatrove.utils.dataset import DatatroveFolderDataset

    ds = DatatroveFolderDataset(str(run.tokens / "val"), seq_len=16, token_size=4, return_positions=True)
    n_tokens = sum(m["tokens"] for m in meta["splits"]["val"].values())
    assert len(ds) == sum(m["tokens"] // 17 for m in meta["splits"]["val"].values())
    first = ds[0]
    assert first["input_ids"].shape == (17,)
    assert int(first["input_ids"][0]) == meta["bos_id"]  # files are sorted: deu first, its first document starts here
    assert int(first["positions"][0]) == 0
    # the index holds cumulative document ends, as datatrove's DocumentTokenizer writes them
    ends = np.fromfile(run.tokens / "val" / "deu.ds.index", dtype="<u8")
    tokens = np.fromfile(run.tokens / "val" / "deu.ds", dtype="<u4")
    assert len(ends) == 20 and ends[-1] == len(tokens)
    assert tokens[0] == meta["bos_id"] and all(tokens[e - 1] == meta["eos_id"] for e in ends)
    assert (run.tokens / "val" / "deu.ds.metadata").read_text().splitlines()[:2] == [f"{tok}|4", str(len(tokens))]
    assert n_tokens == meta["totals"]["val"]


def test_documents_round_trip_through_the_tokenizer(shards):
    run, tok, meta = shards
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(tok))
    tokens = np.fromfile(run.tokens / "val" / "fin.ds", dtype="<u4")
    ends = np.fromfile(run.tokens / "val" / "fin.ds.index", dtype="<u8")
    expected = demo_lines("fin")[120:140]
    starts = np.concatenate([[0], ends[:-1]]).astype(int)
    assert [t.decode(tokens[a + 1:b - 1].tolist()) for a, b in zip(starts, ends.astype(int))] == expected
    v = meta["splits"]["val"]["fin"]
    assert v["bytes"] == sum(len(x.encode()) for x in expected)
    assert v["bytes_per_token"] == pytest.approx(v["bytes"] / v["tokens"])


def test_train_split_follows_temperature_mix(shards):
    run, _, meta = shards
    train = meta["splits"]["train"]
    natural = {l: m["tokens_natural"] for l, m in train.items()}
    weights = temperature_weights(natural, 0.3)
    total = sum(natural.values())
    share = {l: m["tokens"] / sum(x["tokens"] for x in train.values()) for l, m in train.items()}
    for lang in SIZES:
        assert share[lang] == pytest.approx(weights[lang], abs=0.02)
    assert train["ell"]["repeat_factor"] > 1.5 and train["deu"]["repeat_factor"] < 0.8  # upsampled / subsampled
    assert sum(m["tokens"] for m in train.values()) == pytest.approx(total, rel=0.02)
    manifest = read_json(run.manifest)
    assert manifest["tokens"]["totals"] == meta["totals"]
    assert manifest["sources"]["ntrex128"]["languages"]["ell"]["tokens"]["val"] == meta["splits"]["val"]["ell"]["tokens"]


def test_write_shards_is_deterministic(shards, tmp_path):
    run, tok, meta = shards
    a = (run.tokens / "train" / "ell.ds").read_bytes()
    meta2 = write_shards(run, tok, alpha=0.3, seed=0)
    assert (run.tokens / "train" / "ell.ds").read_bytes() == a and meta2["splits"] == meta["splits"]


def test_temperature_weights_and_mix_order():
    w = temperature_weights({"a": 1000, "b": 10}, 0.0)
    assert w == {"a": 0.5, "b": 0.5}
    w1 = temperature_weights({"a": 1000, "b": 10}, 1.0)
    assert w1["a"] == pytest.approx(1000 / 1010)
    order = mix_order([10, 10, 10], 65, np.random.default_rng(0))
    assert len(order) == 3 + 3 + 1 and sorted(order[:3]) == [0, 1, 2]
    # the natural mix (alpha 1) reads every document exactly once, whatever the float rounding of p_l * total
    sizes = {"a": 123457, "b": 98765, "c": 77777}
    total = sum(sizes.values())
    for lang, w in temperature_weights(sizes, 1.0).items():
        docs = [sizes[lang] // 7] * 6 + [sizes[lang] - 6 * (sizes[lang] // 7)]
        assert sorted(mix_order(docs, w * total, np.random.default_rng(0))) == list(range(7)), lang


def test_missing_special_tokens_is_a_clear_error(tmp_path):
    run, _ = make_run(tmp_path)
    from tokenizers import Tokenizer, models

    bare = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    bare.save(str(tmp_path / "bare.json"))
    with pytest.raises(ValueError, match="BOS"):
        write_shards(run, tmp_path / "bare.json")


def test_data_cli_tokenizes_when_given_a_tokenizer(tmp_path, capsys):
    import argparse

    from vernacular.data import cli as data_cli

    src = tmp_path / "corpus"
    src.mkdir()
    texts = []
    for lang in ("deu", "ell"):
        lines = demo_lines(lang)[:80]
        (src / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        texts += lines
    tok = train_tokenizer(tmp_path / "tokenizer.json", texts)
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    args = ["--run-dir", str(tmp_path / "run"), "--source", str(src), "--workers", "1", "--no-progress",
            "--val-fraction", "0.1", "--tokenizer", str(tok)]
    assert data_cli.main(parser.parse_args(args)) == 0
    run = RunDir(tmp_path / "run")
    meta = read_json(run.tokens / "meta.json")
    assert set(meta["splits"]["train"]) == {"deu", "ell"} and meta["totals"]["train"] > 0
    assert "tokens:" in capsys.readouterr().out
    assert meta["alpha"] == 0.3
    run.record_stage("data", {**run.read_config()["data"], "alpha": 0.0})  # as `vernacular data --alpha 0` would
    uniform = write_shards(run, tok)  # the tokenizer stage calls it like this
    assert uniform["alpha"] == 0.0
    shares = [m["tokens"] for m in uniform["splits"]["train"].values()]
    assert max(shares) / min(shares) == pytest.approx(1.0, abs=0.1)
    assert read_json(run.manifest)["sources"]["corpus"]["languages"]["deu"]["tokens"]["train"] > 0
