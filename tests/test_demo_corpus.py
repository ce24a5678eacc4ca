"""The embedded corpus (`--source demo`): NTREX-128 articles in the 24 official EU languages, CC BY-SA 4.0.

Checks the files themselves (languages, licence and attribution, the split contract with the tokenizer's parity dev
set, aligned validation articles disjoint from training) and the data stage on them (licence in the manifest, the
records' own split kept)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from vernacular.data.demo_corpus import (DEMO_DIR, N_ARTICLES, NTREX_COMMIT, article_split, demo_languages,
                                         demo_records)
from vernacular.data.languages import EU_LANGUAGES

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_24_languages_aligned_articles_and_split_contract():
    assert demo_languages() == sorted(EU_LANGUAGES)
    articles = None
    for lang in demo_languages():
        records = list(demo_records(lang))
        ks = [r["article"] for r in records]
        assert len(ks) == len(set(ks)) and all(r["lang"] == lang for r in records)
        # the tokenizer's parity dev articles (k % 20 == 10) are not embedded at all
        assert not [k for k in ks if k % 20 == 10]
        assert sorted(ks) == [k for k in range(N_ARTICLES) if k % 20 != 10]
        assert {r["article"] for r in records if r["split"] == "val"} == {k for k in range(N_ARTICLES) if k % 20 == 0}
        assert all(r["split"] == article_split(r["article"]) for r in records)
        names = [(r["article"], r["id"].rsplit("/", 1)[1]) for r in records]
        if articles is None:
            articles = names
        assert names == articles, f"{lang}: not the same articles as the other languages"  # aligned
        # validation text is disjoint from the training text: no sentence of a held-out article is trained on
        train_lines = {ln for r in records if r["split"] == "train" for ln in r["text"].split("\n")}
        val_lines = [ln for r in records if r["split"] == "val" for ln in r["text"].split("\n")]
        overlap = [ln for ln in val_lines if ln in train_lines and len(ln) > 30]
        assert not overlap, (lang, overlap[:3])
        n_val = sum(len(r["text"]) for r in records if r["split"] == "val")
        assert 0.03 < n_val / sum(len(r["text"]) for r in records) < 0.1


def test_size_licence_and_attribution_ship_with_the_files():
    total = sum(len(r["text"].encode()) for lang in demo_languages() for r in demo_records(lang, "train"))
    assert total > 6_000_000  # bytes of training text: the 7-minute speedrun reads well under one pass
    assert sum(p.stat().st_size for p in DEMO_DIR.glob("*.jsonl.gz")) < 3_500_000  # compressed in the wheel
    licence = (DEMO_DIR / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("Attribution-ShareAlike 4.0 International")
    readme = (DEMO_DIR / "README.md").read_text(encoding="utf-8")
    assert NTREX_COMMIT in readme and "Federmann" in readme and "CC BY-SA 4.0" in readme
    assert "data/demo/*.jsonl.gz" in PACKAGE_DATA.read_text() and "data/demo/LICENSE" in PACKAGE_DATA.read_text()


def test_data_stage_on_the_demo_corpus_keeps_licence_and_split(tmp_path):
    from vernacular.cli import main
    from vernacular.data.text import iter_records
    from vernacular.run import read_json

    run = tmp_path / "run"
    assert main(["data", "--run-dir", str(run), "--source", "demo::lang=mlt", "--workers", "1", "--tasks", "1",
                 "--no-progress"]) == 0
    manifest = read_json(run / "data" / "manifest.json")
    source = manifest["sources"]["demo"]
    assert source["declared_licence"] == "CC-BY-SA-4.0"
    mlt = source["languages"]["mlt"]
    assert mlt["documents_in"] == N_ARTICLES - 6 and mlt["documents_removed"] == 0, mlt["removed"]
    assert (mlt["kept"]["train"]["documents"], mlt["kept"]["val"]["documents"]) == (110, 7)
    by_id = {r["id"]: r for r in demo_records("mlt")}
    splits = Counter()
    for split in ("train", "val"):
        for _, rec in iter_records(run, split):
            assert by_id[rec["id"]]["split"] == split  # the article's own split, not the hash split
            splits[split] += 1
    assert splits == {"train": 110, "val": 7}
    assert json.loads((run / "data" / "manifest.json").read_text())["config"]["sources"] == ["demo::lang=mlt"]
