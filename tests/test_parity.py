"""Parity report and the language-fairness target, on real text: train on NTREX, evaluate on FLORES (never trained on).

The 32 k target test trains both tokenizers at the issue's vocabulary size on the aligned NTREX folder; the product
path (`vernacular data` first, not line-aligned) is measured by benchmarks/tokenizer_parity.py. These tests need the
shared corpora (../shared) and are skipped without them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vernacular.tokenizer.corpus import build_corpus, read_folder
from vernacular.tokenizer.parity import parity_report, plot_parity, write_parity
from vernacular.tokenizer.train import TokenizerConfig, train_tokenizer

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
NTREX = CORPORA / "ntrex128"
FLORES = CORPORA / "flores200-sib"
pytestmark = pytest.mark.skipif(not NTREX.exists(), reason="needs the shared corpora (../shared/corpora)")


@pytest.fixture(scope="module")
def reports():
    docs = read_folder(NTREX)
    corpus = build_corpus(docs)  # both train on every NTREX line; ours is steered by the shipped dev set
    flores = read_folder(FLORES)
    out = {}
    # aligned NTREX (all Greek text kept) needs a little less steering than the product path's run text for the same
    # English cost: at the default target 1.27 this gives 3.1% English loss; the acceptance (product path:
    # 1.289 at 2.64%) is measured by benchmarks/tokenizer_parity.py
    for method in ("plain", "parity"):
        tok, _ = train_tokenizer(corpus, TokenizerConfig(vocab_size=32000, method=method, target=1.28), progress=False)
        out[method] = parity_report(tok, flores)
    return out


def test_parity_target_at_32k_over_30_languages(reports):
    plain, ours = reports["plain"], reports["parity"]
    assert plain["languages"] == ours["languages"] == 30
    assert ours["max_premium"] <= 1.30
    assert ours["max_premium"] < plain["max_premium"] - 0.1
    english_loss = 1 - ours["reference_bytes_per_token"] / plain["reference_bytes_per_token"]
    assert english_loss <= 0.03


def test_report_fields_are_consistent(reports):
    rep = reports["plain"]
    per = rep["per_language"]
    assert per["eng"]["premium"] == 1.0
    assert rep["worst_language"] == max(per, key=lambda k: per[k]["premium"])
    assert rep["max_premium"] == per[rep["worst_language"]]["premium"]
    for lang, s in per.items():
        assert s["premium"] == pytest.approx(s["tokens"] / per["eng"]["tokens"])
        assert s["bytes_per_token"] == pytest.approx(s["bytes"] / s["tokens"])
        assert 1.0 < s["tokens_per_word"] < 4.0, lang


def test_plot_and_json(reports, tmp_path):
    png = plot_parity(reports, tmp_path / "cmp.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parity_cli_and_bad_folders(tmp_path):
    from test_tokenizer import cli

    tok_dir = tmp_path / "tok"
    corpus = build_corpus({k: v[:200] for k, v in read_folder(NTREX).items() if k in ("eng", "deu", "ell")})
    tok, _ = train_tokenizer(corpus, TokenizerConfig(vocab_size=600, method="plain"), progress=False)
    tok_dir.mkdir()
    tok.save(str(tok_dir / "tokenizer.json"))
    aligned = tmp_path / "aligned"
    aligned.mkdir()
    for lang in ("eng", "deu", "ell"):
        (aligned / f"{lang}.txt").write_text("\n".join((FLORES / f"{lang}.txt").read_text().splitlines()[:50]) + "\n")
    assert cli(["tokenizer", "parity", "--tokenizer", str(tok_dir), "--aligned", str(aligned),
                "--out", str(tmp_path / "out")]) == 0
    rep = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert (tmp_path / "out" / "parity.png").exists()
    assert rep == json.loads(json.dumps(write_parity(tok_dir, aligned, tmp_path / "again") | {"aligned_set": str(aligned)}))
    assert rep["worst_language"] == "ell" and rep["lines"] == 50
    (aligned / "fin.txt").write_text("only one line\n")
    with pytest.raises(ValueError, match="not aligned"):
        parity_report(tok_dir, aligned)
    with pytest.raises(SystemExit, match="not aligned"):
        cli(["tokenizer", "parity", "--tokenizer", str(tok_dir), "--aligned", str(aligned)])
    (aligned / "fin.txt").unlink()
    (aligned / "eng.txt").unlink()
    with pytest.raises(ValueError, match="eng.txt"):
        parity_report(tok_dir, aligned)
