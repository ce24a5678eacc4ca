"""Damaged input files through `vernacular data`: what was read before the damage is kept, the damage is quarantined
with file, line (or row) and offset, the run finishes with a warning, and in = kept + removed + quarantined."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from vernacular.data import cli as data_cli
from vernacular.data.manifest import DAMAGE_REASONS, iter_jsonl_gz
from vernacular.data.text import iter_records
from vernacular.run import RunDir, read_json

SAMPLE = Path(__file__).resolve().parent / "data" / "ntrex-sample"  # real news text, CC BY-SA 4.0 (see README.md)


def sample(lang: str) -> list[str]:
    return (SAMPLE / f"{lang}.txt").read_text(encoding="utf-8").splitlines()


def jsonl(texts: list[str], lang: str) -> list[bytes]:
    return [json.dumps({"text": t, "lang": lang}, ensure_ascii=False).encode() + b"\n" for t in texts]


def zstd_blocks(records: list[bytes], every: int = 10) -> bytes:
    """A zstd stream flushed into a new block every `every` records, as streaming writers produce."""
    import io

    buf = io.BytesIO()
    writer = zstandard.ZstdCompressor().stream_writer(buf, closefd=False)
    for i, r in enumerate(records, 1):
        writer.write(r)
        if i % every == 0:
            writer.flush(zstandard.FLUSH_BLOCK)
    writer.flush(zstandard.FLUSH_FRAME)
    return buf.getvalue()


def build(root: Path) -> dict:
    src = root / "src"
    src.mkdir()
    eng, deu, fra = sample("eng"), sample("deu"), sample("fra")
    # 1. gzip cut short by 10 bytes (the tail of the deflate stream and the trailer are gone)
    (src / "cut.jsonl.gz").write_bytes(gzip.compress(b"".join(jsonl(eng[:60], "en")))[:-10])
    # 2. zstd cut short by 10 bytes: the last block (records 41-50) is lost
    (src / "cut.jsonl.zst").write_bytes(zstd_blocks(jsonl(deu[:50], "de"))[:-10])
    # 3. gzip with garbage in the middle of the compressed stream
    whole = bytearray(gzip.compress(b"".join(jsonl(fra[:150], "fr")), compresslevel=1))
    mid = len(whole) // 2
    whole[mid:mid + 64] = bytes(64)
    (src / "corrupt.jsonl.gz").write_bytes(bytes(whole))
    # 4. not Parquet at all, and a Parquet file whose second row group is damaged
    (src / "garbage.parquet").write_bytes(b"PAR1 this is not a parquet file" * 20)
    table = pa.table({"text": eng[60:140], "lang": ["en"] * 80})
    pq.write_table(table, src / "rowgroups.parquet", row_group_size=40)
    meta = pq.ParquetFile(src / "rowgroups.parquet").metadata
    at = meta.row_group(1).column(0).data_page_offset + 40
    raw = bytearray((src / "rowgroups.parquet").read_bytes())
    raw[at:at + 200] = b"\x17" * 200
    (src / "rowgroups.parquet").write_bytes(bytes(raw))
    # 5. a file that cannot be opened (a dangling link: works for root too, unlike chmod 000)
    (src / "gone.jsonl").symlink_to(root / "does-not-exist.jsonl")
    # and one healthy file next to them
    (src / "ok.jsonl").write_bytes(b"".join(jsonl(deu[50:70], "de")))
    return {"mid": mid}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    planted = build(root)
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    args = parser.parse_args(["--run-dir", str(root / "run"), "--source", str(root / "src"), "--tasks", "1",
                              "--workers", "1", "--no-progress", "--min-val-docs", "0"])
    return root, planted, args


def test_damaged_inputs_are_quarantined_and_the_run_finishes(damaged, capfd):
    root, planted, args = damaged
    assert data_cli.main(args) == 0
    out, err = capfd.readouterr()
    assert "warning: 6 damaged input file(s)" in err, err
    rd = RunDir(root / "run")
    manifest = read_json(rd.manifest)
    t = manifest["totals"]
    assert t["balanced"] and t["documents_in"] == t["documents_kept"] + t["documents_removed"] + t["documents_quarantined"]
    assert "quarantined (balanced)" in out

    rejects = list(iter_jsonl_gz(rd.rejects))
    damage = {r["metadata"]["location"]: r["metadata"] for r in rejects
              if r["metadata"]["step"] == "quarantine" and r["metadata"]["reason"].startswith(DAMAGE_REASONS)}
    by_file = {loc.split(":")[0]: (loc, m) for loc, m in damage.items()}
    assert set(by_file) == {"cut.jsonl.gz", "cut.jsonl.zst", "corrupt.jsonl.gz", "garbage.parquet",
                            "rowgroups.parquet", "gone.jsonl"}
    assert {d["location"] for d in manifest["damaged_inputs"]} == set(damage)

    loc, m = by_file["cut.jsonl.gz"]
    assert m["reason"].startswith("truncated-gzip") and m["offset"] > 0
    assert int(loc.split(":")[1]) >= 58  # the records before the cut were read
    loc, m = by_file["cut.jsonl.zst"]
    assert loc == "cut.jsonl.zst:41" and m["reason"].startswith("truncated-zstd")  # blocks 1-4 decoded
    loc, m = by_file["corrupt.jsonl.gz"]
    assert m["reason"].startswith("corrupt-gzip") and int(loc.split(":")[1]) > 1
    assert by_file["garbage.parquet"][0] == "garbage.parquet:1" and by_file["garbage.parquet"][1]["reason"].startswith(
        "bad-parquet")
    assert by_file["rowgroups.parquet"][0] == "rowgroups.parquet:41"  # row group 1 (rows 1-40) was read
    assert by_file["gone.jsonl"][1]["reason"].startswith("unreadable: FileNotFoundError")

    # what was read before the damage went on through the pipeline: clean news sentences are kept
    seen = {}
    for split in ("train", "val"):
        for _, rec in iter_records(rd, split):
            f = rec["metadata"]["location"].split(":")[0]
            seen[f] = seen.get(f, 0) + 1
    assert seen["cut.jsonl.gz"] >= 50 and seen["cut.jsonl.zst"] >= 35 and seen["rowgroups.parquet"] >= 35
    assert seen["ok.jsonl"] >= 18 and seen.get("corrupt.jsonl.gz", 0) >= 1
