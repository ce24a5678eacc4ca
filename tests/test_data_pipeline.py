"""End to end: real NTREX text with planted duplicates, PII, opt-outs and malformed records; everything is found,
counted, and documents in = kept + removed."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pytest

from vernacular.data import cli as data_cli
from vernacular.data.demo_corpus import demo_lines
from vernacular.data.manifest import iter_jsonl_gz
from vernacular.data.pipeline import DataConfig, build_pipeline, make_executors, run_pipeline
from vernacular.data.text import iter_records, iter_texts
from vernacular.run import RunDir, read_json

N_LINES = 120

EMAIL, IP, IBAN, BAD_IBAN, PHONE = ("jana.novak@posta.example.eu", "84.17.46.9", "DE89 3704 0044 0532 0130 00",
                                    "DE00 3704 0044 0532 0130 00", "+49 30 12345678")
ROBOTS = """# AI crawlers may read only the open part of /archiv/
User-agent: GPTBot
Disallow: /archiv/
Allow: /archiv/offen/

User-agent: *
Allow: /
"""


def lines(lang: str, n: int = N_LINES, start: int = 0) -> list[str]:
    return demo_lines(lang)[start:start + n]


def build_fixture(root: Path) -> dict:
    """Writes the sources; returns what was planted and how many records each source holds."""
    src = root / "src"
    src.mkdir(parents=True)
    deu = lines("deu")
    pii_line = (f"Die Redaktion ist unter {EMAIL} erreichbar, telefonisch unter {PHONE}; Spenden gehen auf das Konto "
                f"{IBAN}, der Server hat die Adresse {IP}, die Nummer {BAD_IBAN} ist dagegen ungültig.")
    body = [ln.encode() for ln in deu]
    body += [deu[5].encode(), deu[5].encode()]  # planted exact duplicates of line 6: lines 121, 122
    body += [b"Das ist \xff\xfe kaputt", b"", pii_line.encode()]  # lines 123 (invalid UTF-8), 124 (empty), 125
    (src / "deu.txt").write_bytes(b"\n".join(body) + b"\n")
    (src / "fra.txt").write_text("\n".join(lines("fra")) + "\n", encoding="utf-8")

    eng = lines("eng", 240)
    docs = [" ".join(eng[i:i + 10]) for i in range(0, 240, 10)]  # 20 long English documents + 4 for opt-out tests
    near = docs[3].replace("the", "a", 1).replace(".", "!", 2).upper()  # case/punctuation + one word changed
    records = [{"text": d, "url": f"https://news{i}.example.org/story/{i}", "lang": "en"}
               for i, d in enumerate(docs[:20])]
    planted = [
        {"text": near, "url": "https://mirror.example.net/copy", "lang": "en"},  # 21: near duplicate of record 4
        {"text": docs[20], "url": "https://zeitung.example.de/archiv/2019/x", "lang": "en"},  # 22 GPTBot
        {"text": docs[21], "url": "https://zeitung.example.de/archiv/offen/y", "lang": "en"},  # 23 kept
        {"text": docs[22], "url": "https://blocked.example.com/a", "lang": "en"},  # 24 blocklist
        {"text": docs[23], "url": "https://www.news.blocked.example.com/b", "lang": "en"},  # 25 blocklist
        {"text": lines("deu", 6, 300)[0] + " " + lines("deu", 6, 300)[1], "lang": "en"},  # 26 German declared English
        {"title": "no text field here", "lang": "en"},  # 27 missing text field
        {"text": "x " * 6000, "lang": "en"},  # 28 oversized (limit 10 kB below)
        {"text": "   ", "lang": "en"},  # 29 empty after cleanup
        {"text": " ".join(lines("spa", 3)), "language": "es"},  # 30 kept, language from the record
    ]
    with open(src / "web.jsonl", "wb") as f:
        for r in records + planted[:5]:
            f.write(json.dumps(r, ensure_ascii=False).encode() + b"\n")
        f.write(b'{"text": "broken json, no closing brace"\n')  # line 26 (records 21-25 are planted[:5])
        for r in planted[5:]:
            f.write(json.dumps(r, ensure_ascii=False).encode() + b"\n")
        f.write(b'{"text": "ung\xfcltig", "lang": "de"}\n')  # 32: invalid UTF-8 inside JSON
    (root / "robots.txt").write_text(ROBOTS)
    (root / "blocklist.txt").write_text("# domains that opted out\nblocked.example.com\n")
    return {"deu_records": len(body), "fra_records": N_LINES, "web_records": 32}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    planted = build_fixture(root)
    cfg = DataConfig(sources=[str(root / "src")], robots=[f"zeitung.example.de={root / 'robots.txt'}"],
                     blocklist=str(root / "blocklist.txt"), max_doc_bytes=10_000, val_fraction=0.1, tasks=2,
                     workers=1, progress=False, collected="2026-11-01")
    rd = RunDir(root / "run")
    manifest = run_pipeline(cfg, rd)
    return rd, manifest, planted


def rejects(rd: RunDir) -> list[dict]:
    return list(iter_jsonl_gz(rd.rejects))


def by_location(rd: RunDir) -> dict[str, str]:
    return {r["metadata"]["location"]: r["metadata"]["reason"] for r in rejects(rd)}


def test_documents_in_equals_kept_plus_removed(run):
    rd, manifest, planted = run
    src = manifest["sources"]
    txt = src["src"] if "src" in src else None
    assert txt is not None, list(src)
    total_in = sum(e["documents_in"] for s in src.values() for e in s["languages"].values())
    # independent count: every record we wrote, one per line
    assert total_in == planted["deu_records"] + planted["fra_records"] + planted["web_records"]
    kept = sum(1 for split in ("train", "val") for _ in iter_texts(rd, split))
    removed = len(rejects(rd))
    assert total_in == kept + removed
    assert manifest["totals"]["balanced"] and manifest["totals"]["documents_kept"] == kept
    for s in src.values():
        for lang, e in s["languages"].items():
            assert e["balanced"], (lang, e)
            assert e["documents_in"] == (e["documents_kept"] + sum(sum(r.values()) for r in e["removed"].values())
                                         + sum(e["quarantined"].values()))


def test_malformed_records_are_quarantined_with_location(run):
    rd, _, _ = run
    loc = by_location(rd)
    assert loc["deu.txt:123"] == "invalid-utf8"
    assert loc["deu.txt:124"] == "empty"
    assert loc["web.jsonl:26"] == "broken-json"
    assert loc["web.jsonl:28"] == "missing-text-field"
    assert loc["web.jsonl:29"] == "oversized"
    assert loc["web.jsonl:30"] == "empty"
    assert loc["web.jsonl:32"] == "invalid-utf8"
    raw = next(r for r in rejects(rd) if r["metadata"]["location"] == "deu.txt:123")
    import base64

    assert base64.b64decode(raw["metadata"]["raw_b64"]) == b"Das ist \xff\xfe kaputt"  # original bytes kept


def test_duplicates_language_and_optout_removed_with_reason(run):
    rd, manifest, _ = run
    loc = by_location(rd)
    assert loc["deu.txt:121"] == loc["deu.txt:122"] == "exact-duplicate"
    assert "deu.txt:6" not in loc  # the first copy stays
    assert loc["web.jsonl:21"] == "near-duplicate"
    assert "web.jsonl:4" not in loc
    assert loc["web.jsonl:22"] == "robots:GPTBot"
    assert "web.jsonl:23" not in loc  # longest match: Allow /archiv/offen/ beats Disallow /archiv/
    assert loc["web.jsonl:24"] == loc["web.jsonl:25"] == "blocklist"
    assert loc["web.jsonl:27"] == "lang-mismatch"
    steps = Counter(r["metadata"]["step"] for r in rejects(rd))
    assert {"quarantine", "language", "optout", "exact-dedup", "near-dedup"} <= set(steps)
    langs = manifest["sources"]["src"]["languages"]
    assert langs["deu"]["quarantined"] == {"empty": 1}  # the undecodable lines have no language: counted as `und`
    assert langs["und"]["quarantined"]["invalid-utf8"] == 2 and langs["und"]["quarantined"]["broken-json"] == 1
    eng = manifest["sources"]["src"]["languages"]["eng"]
    assert eng["removed"]["near-dedup"] == {"near-duplicate": 1}
    assert eng["dedup"]["near_ratio"] > 0
    assert manifest["sources"]["src"]["languages"]["deu"]["removed"]["exact-dedup"]["exact-duplicate"] >= 2


def test_pii_redacted_and_counted(run):
    rd, manifest, _ = run
    texts = [t for _, t in iter_texts(rd, "train")] + [t for _, t in iter_texts(rd, "val")]
    pii = [t for t in texts if "<email-pii>" in t]
    assert len(pii) == 1
    t = pii[0]
    for placeholder in ("<email-pii>", "<ip-pii>", "<iban-pii>", "<phone-pii>"):
        assert placeholder in t, t
    assert EMAIL not in t and IP not in t and IBAN not in t and "12345678" not in t
    assert BAD_IBAN in t  # fails the mod-97 check: not an IBAN, left alone
    assert all(EMAIL not in x for x in texts)
    assert manifest["sources"]["src"]["languages"]["deu"]["pii_redactions"] == {"email": 1, "iban": 1, "ip": 1,
                                                                                "phone": 1}


def test_text_output_languages_split_and_manifest(run):
    rd, manifest, _ = run
    langs = {lang for lang, _ in iter_records(rd, "train")}
    assert langs == {"deu", "fra", "eng", "spa"}
    val = list(iter_texts(rd, "val"))
    assert val and {lang for lang, _ in val} <= langs
    assert set(t for _, t in val).isdisjoint(t for _, t in iter_texts(rd, "train"))
    only_fra = {lang for lang, _ in iter_texts(rd, "train", langs=["fra"])}
    assert only_fra == {"fra"}
    s = manifest["sources"]["src"]
    assert s["declared_licence"] == "unknown" and s["collection_date"] == "2026-11-01"
    top = s["languages"]["eng"]["top_domains"]
    assert top and all(d["bytes"] > 0 for d in top)
    w = manifest["mix"]["weights"]
    assert abs(sum(w.values()) - 1) < 1e-9 and w["spa"] > 0
    assert read_json(rd.manifest)["totals"] == manifest["totals"]


def test_split_is_deterministic(tmp_path):
    src = tmp_path / "deu.txt"
    src.write_text("\n".join(lines("deu", 60)) + "\n")
    outs = []
    for i, tasks in enumerate((1, 2)):
        rd = RunDir(tmp_path / f"r{i}")
        run_pipeline(DataConfig(sources=[str(src)], tasks=tasks, workers=1, progress=False, val_fraction=0.2), rd)
        outs.append((sorted(t for _, t in iter_texts(rd, "train")), sorted(t for _, t in iter_texts(rd, "val"))))
    assert outs[0] == outs[1] and outs[0][1]


def test_small_languages_get_a_validation_document(tmp_path):
    for lang, n in (("lit", 12), ("mlt", 3)):
        (tmp_path / f"{lang}.txt").write_text("\n".join(lines(lang, n)) + "\n")
    rd = RunDir(tmp_path / "run")
    manifest = run_pipeline(DataConfig(sources=[str(tmp_path / "lit.txt"), str(tmp_path / "mlt.txt")], workers=1,
                                       progress=False, val_fraction=0.0), rd)
    for lang in ("lit", "mlt"):
        val = [t for _, t in iter_texts(rd, "val", [lang])]
        train = [t for _, t in iter_texts(rd, "train", [lang])]
        assert len(val) == 1 and len(train) >= 1 and val[0] not in train
    assert manifest["val_documents_moved_from_train"] == {"lit": 1, "mlt": 1}
    assert manifest["totals"]["balanced"]
    sources = read_json(rd.manifest)["sources"]
    assert [s["languages"]["mlt"]["kept"]["val"]["documents"] for n, s in sources.items() if n.endswith("mlt.txt")] == [1]


def test_cli_end_to_end_prints_summary(tmp_path):
    """The real entry point, with 2 datatrove worker processes."""
    import subprocess
    import sys

    src = tmp_path / "corpus"
    src.mkdir()
    for lang in ("ell", "fin"):
        (src / f"{lang}.txt").write_text("\n".join(lines(lang, 50)) + "\n")
    proc = subprocess.run([sys.executable, "-m", "vernacular", "data", "--run-dir", str(tmp_path / "run"), "--source",
                           str(src), "--tasks", "2", "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "100 documents in = " in proc.stdout and "(balanced)" in proc.stdout and "0 quarantined" in proc.stdout
    assert "ell" in proc.stdout and "fin" in proc.stdout and "top reasons" in proc.stdout
    rd = RunDir(tmp_path / "run")
    assert rd.read_config()["data"]["sources"] == [str(src)]
    manifest = read_json(rd.manifest)
    assert manifest["sources"]["corpus"]["declared_licence"] == "unknown"
    assert set(manifest["stage_seconds"]) == {"decont_index", "filter", "exact_find", "minhash_sigs",
                                              "minhash_buckets", "minhash_cluster", "final"}
    assert {lang for lang, _ in iter_texts(rd)} == {"ell", "fin"}


def test_cli_rejects_bad_source(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    rc = data_cli.main(parser.parse_args(["--run-dir", str(tmp_path / "r"), "--source", str(tmp_path / "missing")]))
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_same_pipeline_builds_slurm_executors(tmp_path):
    pytest.importorskip("datatrove.executor.slurm")
    from datatrove.executor import SlurmPipelineExecutor

    src = tmp_path / "deu.txt"
    src.write_text("Ein Satz mit genug Wörtern.\n")
    cfg = DataConfig(sources=[str(src)], tasks=4)
    executors = make_executors(cfg, tmp_path / "run", "slurm", partition="cpu", time="01:00:00")
    assert all(isinstance(e, SlurmPipelineExecutor) for e in executors)
    assert [e.world_size for e in executors] == [4, 4, 1, 4, 14, 1, 4]
    assert executors[-1].depends is executors[-2]
    assert [type(s).__name__ for s in build_pipeline(cfg, tmp_path / "run", "final")] == [
        "RankJsonlReader", "ExactDedupFilter", "MinhashDedupFilter", "PIIRedactor", "SplitAssigner", "KeptWriter"]
