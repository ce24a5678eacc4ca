"""Sources: spec parsing, language from file names / fields / hub configs, every format, malformed records kept."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from vernacular.data.demo_corpus import demo_lines
from vernacular.data.sources import (HubSourceReader, default_licence, lang_from_path, make_reader, parse_source)



def ntrex(lang: str, n: int) -> list[str]:
    """The first n NTREX-128 sentences of `lang`, from the embedded corpus."""
    return demo_lines(lang)[:n]


def read_all(spec: str, **kw) -> list:
    docs = []
    for source in parse_source(spec, **kw):
        docs.extend(make_reader(source).run(None, 0, 1))
    return docs


def test_lang_from_path_and_licences():
    assert lang_from_path("../shared/corpora/ntrex128/deu.txt") == "deu"
    assert lang_from_path("x/ell.jsonl.gz") == "ell"
    assert lang_from_path("fineweb-2/data/fin_Latn/train/000_00000.parquet") == "fin"
    assert lang_from_path("data/lvs_Latn/x.parquet") == "lav"
    assert lang_from_path("misc/notes.txt") is None
    assert default_licence("corpora/ntrex128") == "CC-BY-SA-4.0"
    assert default_licence("HuggingFaceFW/fineweb-2") == "ODC-By-1.0"
    assert default_licence("my/own") == "unknown"
    assert parse_source("demo")[0].licence == "CC-BY-SA-4.0"


def test_spec_options_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("Hallo Welt\n")
    s = parse_source(f"{tmp_path}::licence=CC-BY-4.0,lang=de,collected=2025-01-02,name=web")[0]
    assert (s.kind, s.licence, s.lang, s.collected, s.name) == ("txt", "CC-BY-4.0", "deu", "2025-01-02", "web")
    with pytest.raises(FileNotFoundError):
        parse_source(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown source option"):
        parse_source(f"{tmp_path}::colour=red")
    with pytest.raises(ValueError, match="unknown language"):
        parse_source(f"{tmp_path}::lang=xx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt"):
        parse_source(str(tmp_path / "empty"))
    hf = parse_source("hf:HuggingFaceFW/fineweb-2:deu_Latn")[0]
    assert (hf.kind, hf.location, hf.hf_config, hf.licence) == ("hf", "HuggingFaceFW/fineweb-2", "deu_Latn", "ODC-By-1.0")


def test_txt_lines_and_files(tmp_path):
    (tmp_path / "pol.txt").write_text("\n".join(ntrex("pol", 5)) + "\n\n", encoding="utf-8")
    docs = read_all(str(tmp_path / "pol.txt"))
    assert [d.metadata["lang"] for d in docs] == ["pol"] * 6
    assert docs[0].text == ntrex("pol", 1)[0] and docs[0].metadata["location"] == "pol.txt:1"
    assert docs[5].text == ""  # the blank line is an (empty) document: the pipeline quarantines it, not the reader
    whole = read_all(str(tmp_path), txt_mode="file")
    assert len(whole) == 1 and whole[0].text.count("\n") == 6


def test_jsonl_plain_gzip_zstd_with_malformed_lines(tmp_path):
    recs = [{"text": t, "lang": "sv", "url": f"https://ex.se/{i}"} for i, t in enumerate(ntrex("swe", 3))]
    payload = b"".join(json.dumps(r).encode() + b"\n" for r in recs)
    bad = b'{"text": oops}\n{"body": "no text"}\n\xff\xfe\n[1, 2]\n'
    (tmp_path / "a.jsonl").write_bytes(payload + bad)
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(payload)
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    docs = read_all(str(tmp_path))
    good = [d for d in docs if not d.metadata.get("quarantine")]
    assert len(good) == 9 and {d.metadata["lang"] for d in good} == {"swe"}
    assert good[0].metadata["url"] == "https://ex.se/0"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.jsonl").write_text('{"text": "Ein Satz.", "lang": "zh"}\n{"text": "Ein Satz."}\n')
    other = read_all(str(tmp_path / "other"))
    assert [d.metadata["lang"] for d in other] == ["zh", None]  # unknown code kept (-> lang-unsupported), none: LID
    assert [d.metadata["quarantine"] for d in docs if d.metadata.get("quarantine")] == [
        "broken-json", "missing-text-field", "invalid-utf8", "broken-json"]
    assert [d.metadata["location"] for d in docs if d.metadata.get("quarantine")] == [
        "a.jsonl:4", "a.jsonl:5", "a.jsonl:6", "a.jsonl:7"]


def test_parquet_text_field_and_missing_text(tmp_path):
    table = pa.table({"content": ntrex("ita", 4) + [None], "language": ["it"] * 5})
    pq.write_table(table, tmp_path / "part-0.parquet")
    docs = read_all(str(tmp_path), text_field="content")
    assert [d.text for d in docs[:4]] == ntrex("ita", 4)
    assert {d.metadata["lang"] for d in docs[:4]} == {"ita"}
    assert docs[4].metadata["quarantine"] == "missing-text-field"


def test_hub_reader_on_a_local_repo_laid_out_like_fineweb2(tmp_path):
    """`datasets.load_dataset(<repo>, <config>, split=...)` on a folder with the hub's README `configs:` card: the
    same call, the same resolution of configs to files, as for HuggingFaceFW/fineweb-2 on the hub."""
    repo = tmp_path / "fineweb-2"
    for cfg, lang in (("deu_Latn", "deu"), ("est_Latn", "est")):
        folder = repo / "data" / cfg / "train"
        folder.mkdir(parents=True)
        texts = ntrex(lang, 6)
        pq.write_table(pa.table({"text": texts, "id": [f"<urn:{lang}:{i}>" for i in range(6)],
                                 "url": [f"https://{lang}.example/{i}" for i in range(6)]}), folder / "000.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: deu_Latn\n  data_files:\n  - split: train\n    path: data/deu_Latn/train/*.parquet\n"
        "- config_name: est_Latn\n  data_files:\n  - split: train\n    path: data/est_Latn/train/*.parquet\n"
        "---\n# test fixture\n")
    source = parse_source(f"hf:{repo}:est_Latn")[0]
    reader = make_reader(source)
    assert isinstance(reader, HubSourceReader)
    docs = list(reader.run(None, 0, 1))
    assert [d.text for d in docs] == ntrex("est", 6)
    assert {d.metadata["lang"] for d in docs} == {"est"} and docs[0].id == "<urn:est:0>"
    assert docs[0].metadata["url"] == "https://est.example/0"
    assert source.licence == "ODC-By-1.0"


def test_demo_corpus_is_readable():
    docs = read_all("demo")
    assert docs and {d.metadata["source"] for d in docs} == {"demo"}
    langs = {d.metadata["lang"] for d in docs}
    assert len(langs) == 24 and None not in langs
    assert {d.metadata["split"] for d in docs} == {"train", "val"}  # the records' own split is kept
    assert all(d.id.startswith(f"ntrex128/{d.metadata['lang']}/") for d in docs)


def test_hub_source_through_the_pipeline_with_two_tasks(tmp_path):
    """Two datatrove tasks split one hub dataset between them; nothing is lost or read twice."""
    from vernacular.data.pipeline import DataConfig, run_pipeline
    from vernacular.data.text import iter_texts

    repo = tmp_path / "fineweb-2"
    folder = repo / "data" / "deu_Latn" / "train"
    folder.mkdir(parents=True)
    texts = ntrex("deu", 40)
    pq.write_table(pa.table({"text": texts, "url": [f"https://x{i}.example.de/a" for i in range(40)]}),
                   folder / "000.parquet")
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: deu_Latn\n  data_files:\n  - split: train\n"
                                    "    path: data/deu_Latn/train/*.parquet\n---\n")
    manifest = run_pipeline(DataConfig(sources=[f"hf:{repo}:deu_Latn"], tasks=2, workers=1, progress=False,
                                       min_val_docs=0, val_fraction=0.0), tmp_path / "run")
    source = manifest["sources"][f"hf:{repo}:deu_Latn"]
    assert source["declared_licence"] == "ODC-By-1.0" and source["languages"]["deu"]["documents_in"] == 40
    kept = [t for _, t in iter_texts(tmp_path / "run", "train")]
    assert set(kept) <= set(texts) and len(set(kept)) == len(kept) >= 38  # clean news: (almost) all kept, once
    assert manifest["totals"]["balanced"] and len(source["languages"]["deu"]["top_domains"]) == 10


def test_hub_source_offline_fails_in_one_line_and_runs_from_a_local_mirror(tmp_path):
    """No internet (HF_HUB_OFFLINE=1, empty cache): one line saying what could not be reached and how to proceed;
    the documented offline path (a local mirror in the hub's parquet layout) runs through `vernacular data`."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    base = [sys.executable, "-m", "vernacular", "data", "--tasks", "1", "--workers", "1", "--no-progress",
            "--no-default-decontamination"]
    proc = subprocess.run([*base, "--run-dir", str(tmp_path / "r1"), "--source", "hf:HuggingFaceFW/fineweb-2:deu_Latn"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hub dataset HuggingFaceFW/fineweb-2 (config deu_Latn)")
    assert "HF_HUB_OFFLINE=1" in lines[0] and "huggingface-cli download" in lines[0] and "hf:DIR:deu_Latn" in lines[0]

    repo = tmp_path / "fineweb-2"  # what `huggingface-cli download ... --local-dir` leaves: README card + parquet
    folder = repo / "data" / "deu_Latn" / "train"
    folder.mkdir(parents=True)
    sample = (Path(__file__).resolve().parent / "data" / "ntrex-sample" / "deu.txt").read_text().splitlines()[:30]
    pq.write_table(pa.table({"text": sample, "id": [f"<urn:{i}>" for i in range(30)]}), folder / "000_00000.parquet")
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: deu_Latn\n  data_files:\n  - split: train\n"
                                    "    path: data/deu_Latn/train/*.parquet\n---\n")
    proc = subprocess.run([*base, "--run-dir", str(tmp_path / "r2"), "--source", f"hf:{repo}:deu_Latn"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "30 documents in = " in proc.stdout and "(balanced)" in proc.stdout
