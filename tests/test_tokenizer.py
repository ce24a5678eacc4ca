"""The tokenizer stage on real text: train on shipped NTREX lines (the parity dev set) and a sample of the embedded
corpus (the `demo_txt` fixture), load with transformers, round-trip, chat template, CLI. Nothing here needs
../shared."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from vernacular.tokenizer import cli as tokenizer_cli
from vernacular.tokenizer import BOS, END, EOS, PAD, SPECIAL_TOKENS, load, render_chat
from vernacular.tokenizer.bpe import ParityBPEConfig, train_parity_bpe
from vernacular.tokenizer.chat import ChatTemplateError
from vernacular.tokenizer.corpus import PARITY_DEV, build_corpus, read_folder, read_parity_dev
from vernacular.tokenizer.train import TokenizerConfig, count_words, skeleton, train_tokenizer



def cli(argv: list[str]) -> int:
    """`vernacular tokenizer ...` through the stage's own parser (the top-level CLI imports every stage)."""
    import argparse

    assert argv[0] == "tokenizer"
    parser = argparse.ArgumentParser(prog="vernacular tokenizer")
    tokenizer_cli.add_arguments(parser)
    return tokenizer_cli.main(parser.parse_args(argv[1:]))


CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Καλημέρα! Wie spät ist es?"},
    {"role": "assistant", "content": "Il est midi."},
    {"role": "user", "content": "Dziękuję."},
]


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory, demo_txt):
    """A small plain tokenizer trained through the CLI on the embedded corpus (24 languages)."""
    out = tmp_path_factory.mktemp("tok") / "plain"
    assert cli(["tokenizer", "--input", str(demo_txt), "--out", str(out), "--method", "plain", "--vocab-size", "4000",
                "--quiet"]) == 0
    return out


def test_files_and_special_token_ids(plain_dir):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "train_stats.json"):
        assert (plain_dir / name).exists(), name
    tok = load(plain_dir)
    assert tok.get_vocab_size() == 4000
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(7))
    # special tokens are atomic inside text, never split into bytes
    ids = tok.encode(f"{BOS}hello{END}").ids
    assert ids[0] == 0 and ids[-1] == SPECIAL_TOKENS.index(END)
    cfg = json.loads((plain_dir / "tokenizer_config.json").read_text())
    assert cfg["bos_token"] == BOS and cfg["eos_token"] == EOS and cfg["pad_token"] == PAD
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["model_max_length"] == 2048


def test_transformers_loads_and_round_trips_all_languages(plain_dir):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_file=str(plain_dir / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(plain_dir))
    assert auto.bos_token_id == 0 and auto.eos_token_id == 1 and auto.pad_token_id == 2
    ours = load(plain_dir)
    shipped = read_folder(PARITY_DEV)  # NTREX lines in 30 languages, none of them trained on here
    assert len(shipped) == 30
    for lang, lines in shipped.items():
        for line in lines:
            ids = auto(line, add_special_tokens=False)["input_ids"]
            assert ids == ours.encode(line).ids
            assert auto.decode(ids) == line, lang
            assert fast.decode(fast(line)["input_ids"]) == line, lang
        # whole documents too: newlines, emoji and characters outside the training data survive the byte fallback
        doc = "\n".join(lines[:20]) + " 🙂 ∮ ⅞ \t end"
        assert ours.decode(ours.encode(doc).ids) == doc, lang


def test_chat_template_matches_transformers(plain_dir):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(plain_dir))
    for gen in (True, False):
        ours = render_chat(CHAT, add_generation_prompt=gen)
        theirs = auto.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=gen)
        assert theirs == ours
    text = render_chat(CHAT)
    assert text.startswith(BOS + "<|system|>\nAnswer briefly.<|end|>\n<|user|>\n")
    assert text.endswith("<|user|>\nDziękuję.<|end|>\n<|assistant|>\n")
    ids = auto.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert list(ids) == load(plain_dir).encode(text).ids
    assert ids.count(SPECIAL_TOKENS.index(END)) == 4


def test_chat_rejects_bad_messages():
    with pytest.raises(ChatTemplateError, match="unknown chat role"):
        render_chat([{"role": "robot", "content": "x"}])
    with pytest.raises(ChatTemplateError):
        render_chat([{"content": "no role"}])
    with pytest.raises(ChatTemplateError, match="string or a list"):
        render_chat([{"role": "user", "content": 3}])


def test_merge_loop_on_a_hand_checked_example():
    alphabet = sorted(set("abcd"))
    words = {"x": Counter({"abab": 3, "abc": 2, "cd": 5})}
    learned, merges, stats = train_parity_bpe(words, words, alphabet, 0, ParityBPEConfig(vocab_size=7, reference=None),
                                              progress=False)
    # (a,b) occurs 3*2 + 2 = 8 times; then (c,d) 5 beats (ab,ab) 3 and (ab,c) 2; then (ab,ab)
    assert merges == [("a", "b"), ("c", "d"), ("ab", "ab")]
    assert learned == ["ab", "cd", "abab"]
    assert stats["dev_tokens"] == {"x": 3 * 1 + 2 * 2 + 5 * 1}


def test_incremental_counts_match_hf_encoding(demo_txt):
    """The loop's running dev token count must equal what HF tokenizers produces with the saved merges."""
    docs = {lang: read_folder(demo_txt)[lang] for lang in ("eng", "ell", "fin", "bul")}
    corpus = build_corpus(docs)
    assert sorted(corpus.dev) == sorted(docs) and len({len(v) for v in corpus.dev.values()}) == 1
    tok, stats = train_tokenizer(corpus, TokenizerConfig(vocab_size=1500, method="parity", target=1.0), progress=False)
    assert stats["steered_merges"] > 0 and stats["parity_dev"].startswith("shipped")
    for lang, dev in corpus.dev.items():
        assert sum(len(e.ids) for e in tok.encode_batch(dev)) == stats["dev_tokens"][lang], lang


def test_unaligned_input_is_balanced_by_content():
    """Unaligned text is capped at the same content per language: the dev set says Greek needs more characters than
    English for the same sentences, so Greek keeps more characters."""
    dev = ({"eng": ["a" * 100], "ell": ["b" * 150], "fra": ["c" * 100]}, "test dev")
    docs = {"eng": ["x" * 10] * 500, "ell": ["y" * 10] * 2000, "fra": ["z" * 10] * 90}
    corpus = build_corpus(docs, dev=dev)
    assert not corpus.aligned and corpus.dev_name == "test dev"
    # the median content is English's 5000 chars; Greek is allowed 1.5x the characters for it
    assert [len(corpus.train[k]) for k in ("eng", "ell", "fra")] == [500, 750, 90]


def test_word_counts_equal_hf_pre_tokenizer():
    """count_words (GPT-2 split in C) gives exactly the words HF's NFC + ByteLevel pre-tokenizer makes."""
    tok = skeleton()
    docs = [line for lines in read_folder(PARITY_DEV).values() for line in lines] + [
        "It's 3.14159 — we'll   see:\n\n  tabs\tand  spaces  ", "e\u0301 non-NFC, 🙂🙂 ∮ ⅞ 12,345 x1y2 'S 'LL",
        "   leading", "trailing   ", "\r\n", "日本語のテキスト", "a\u00a0b\u2009c\u3000d"]
    expected = Counter(w for d in docs for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(d)))
    assert count_words(docs) == expected


def test_parity_dev_is_shipped_and_user_given(tmp_path, demo_txt):
    docs, name = read_parity_dev()
    assert len(docs) == 30 and len({len(v) for v in docs.values()}) == 1 and "shipped" in name
    assert (PARITY_DEV / "LICENSE.md").read_text().startswith("Attribution-ShareAlike 4.0 International")
    own = tmp_path / "own"
    own.mkdir()
    for lang in ("eng", "ell", "deu"):
        (own / f"{lang}.txt").write_text("\n".join(docs[lang][:30]) + "\n")
    train = {lang: read_folder(demo_txt)[lang] for lang in ("eng", "ell", "deu", "fin")}
    out = tmp_path / "tok"
    assert cli(["tokenizer", "--input", str(demo_txt), "--out", str(out), "--vocab-size", "800",
                "--parity-dev", str(own), "--quiet"]) == 0
    stats = json.loads((out / "train_stats.json").read_text())
    assert stats["parity_dev"] == str(own) and sorted(stats["dev_premium"]) == ["deu", "ell", "eng"]
    corpus = build_corpus(train, parity_dev=own)
    assert sorted(corpus.dev) == ["deu", "ell", "eng"]  # fin is trained on but never steered for
    (own / "fra.txt").write_text("one line\n")
    with pytest.raises(SystemExit, match="multi-parallel"):
        cli(["tokenizer", "--input", str(demo_txt), "--out", str(out), "--parity-dev", str(own), "--quiet"])


def test_cli_errors_are_clear(tmp_path):
    with pytest.raises(SystemExit, match="--input"):
        cli(["tokenizer", "--out", str(tmp_path / "t")])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "eng.txt").write_bytes(b"ok\n\xff\xfe broken\n")
    with pytest.raises(SystemExit, match="not valid UTF-8"):
        cli(["tokenizer", "--input", str(tmp_path / "bad"), "--out", str(tmp_path / "t"), "--quiet"])
    (tmp_path / "named").mkdir()
    (tmp_path / "named" / "English.txt").write_text("hello\n")
    with pytest.raises(SystemExit, match="ISO 639-3"):
        cli(["tokenizer", "--input", str(tmp_path / "named"), "--out", str(tmp_path / "t"), "--quiet"])
    with pytest.raises(FileNotFoundError, match="vernacular tokenizer"):
        load(tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="vernacular data"):
        cli(["tokenizer", "--run-dir", str(tmp_path / "empty-run"), "--quiet"])


def test_cli_run_dir_records_stage_and_parity(tmp_path, demo_txt):
    run = tmp_path / "run"
    assert cli(["tokenizer", "--run-dir", str(run), "--input", str(demo_txt), "--vocab-size", "1000",
                "--parity-eval", str(PARITY_DEV), "--no-shards", "--quiet"]) == 0
    from vernacular.run import RunDir

    rd = RunDir(run)
    assert (rd.tokenizer / "tokenizer.json").exists() and (rd.tokenizer / "parity.png").stat().st_size > 1000
    rep = json.loads((rd.tokenizer / "parity.json").read_text())
    assert rep["languages"] == 30 and rep["per_language"]["eng"]["premium"] == 1.0
    assert rep["parity_dev"].startswith("shipped")
    recorded = rd.read_config()["tokenizer"]
    assert recorded["method"] == "parity" and recorded["vocab_size"] == 1000
    assert recorded["max_premium"] == pytest.approx(rep["max_premium"]) and recorded["parity_dev"] == rep["parity_dev"]


def test_run_dir_end_to_end_steers_and_writes_shards(tmp_path, demo_txt):
    """The product path on text of the embedded corpus: `vernacular data`, then `vernacular tokenizer --run-dir` trains on the
    run's cleaned text (not line-aligned) steered by the shipped dev set, and the shards come out framed with our
    BOS/EOS ids. Against plain BPE on the same run text, the steered tokenizer has a lower max premium on the dev set
    (the text it was steered by: this checks the steering works, FLORES is the benchmark's evaluation)."""
    import argparse

    import numpy as np

    from vernacular.data.cli import add_arguments as data_args, main as data_main
    from vernacular.run import RunDir, read_json

    parser = argparse.ArgumentParser()
    data_args(parser)
    run = tmp_path / "run"
    assert data_main(parser.parse_args(["--run-dir", str(run), "--source", str(demo_txt), "--workers", "1",
                                        "--no-progress"])) == 0
    assert cli(["tokenizer", "--run-dir", str(run), "--vocab-size", "1200", "--parity-eval", str(PARITY_DEV),
                "--quiet"]) == 0
    assert cli(["tokenizer", "--run-dir", str(run), "--out", str(tmp_path / "plain"), "--method", "plain",
                "--vocab-size", "1200", "--parity-eval", str(PARITY_DEV), "--no-shards", "--quiet"]) == 0
    rd = RunDir(run)
    stats = json.loads((rd.tokenizer / "train_stats.json").read_text())
    assert stats["steered_merges"] > 0 and stats["parity_dev"].startswith("shipped")
    ours = json.loads((rd.tokenizer / "parity.json").read_text())
    plain = json.loads((tmp_path / "plain" / "parity.json").read_text())
    assert ours["max_premium"] < plain["max_premium"] - 0.05, (ours["max_premium"], plain["max_premium"])
    meta = read_json(rd.tokens / "meta.json")
    assert "tokenizer" in json.dumps(meta)
    ids = np.fromfile(rd.tokens / "train" / "ell.ds", dtype="<u4")
    assert ids[0] == 0 and ids[-1] == 1 and ids.max() < 1200
    assert rd.read_config()["tokenizer"]["input"] == "run text"
