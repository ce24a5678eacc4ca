"""Provenance manifest: what came in, what left (by step and reason), what was kept, per source and language.

Built from the run's own outputs (input counts, rejects, kept text), so it cannot disagree with them. The AI Act
training-data summary is written from this file.
"""

from __future__ import annotations

import datetime as dt
import gzip
from collections import Counter, defaultdict
from pathlib import Path

import orjson

from vernacular.data.robots import domain_of, load_ai_agents
from vernacular.run import RunDir, read_json, write_json

TOP_DOMAINS = 10
# quarantine reasons for damaged input files (as opposed to one bad record): listed in the manifest and warned about
DAMAGE_REASONS = ("truncated-", "corrupt-", "bad-parquet", "unreadable")


def iter_jsonl_gz(folder: Path):
    for path in sorted(Path(folder).rglob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                yield orjson.loads(line)


def temperature_weights(sizes: dict[str, float], alpha: float) -> dict[str, float]:
    """Sampling probabilities p_l ∝ n_l^alpha (alpha=1: natural mix, alpha=0: uniform over languages)."""
    powered = {lang: float(n) ** alpha for lang, n in sizes.items() if n > 0}
    total = sum(powered.values())
    return {lang: v / total for lang, v in sorted(powered.items())} if total else {}


def _lang_entry() -> dict:
    return {"documents_in": 0, "bytes_in": 0, "documents_kept": 0, "bytes_kept": 0,
            "kept": {"train": {"documents": 0, "bytes": 0}, "val": {"documents": 0, "bytes": 0}},
            "removed": defaultdict(Counter), "quarantined": Counter(), "pii_redactions": Counter(), "domains": Counter()}


def build_manifest(run: RunDir, cfg, timings: dict[str, float] | None = None) -> dict:
    from vernacular.data.pipeline import config_record, resolve_sources

    specs = resolve_sources(cfg)
    by_source: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(_lang_entry))
    for path in sorted((run.data / "work" / "counts").glob("*.json")):
        for source, langs in read_json(path).items():
            for lang, (docs, nbytes) in langs.items():
                e = by_source[source][lang]
                e["documents_in"] += docs
                e["bytes_in"] += nbytes
    # removed documents keep the language they were read with (`declared`), so in = kept + removed + quarantined
    damaged = []
    for rec in iter_jsonl_gz(run.rejects):
        meta = rec.get("metadata", {})
        e = by_source[meta.get("source", "?")][meta.get("declared_lang") or meta.get("lang") or "und"]
        if meta["step"] == "quarantine":
            e["quarantined"][meta["reason"].split(":")[0]] += 1
            if meta["reason"].startswith(DAMAGE_REASONS):
                damaged.append({"source": meta.get("source"), "location": meta.get("location"),
                                "offset": meta.get("offset"), "reason": meta["reason"]})
        else:
            e["removed"][meta["step"]][meta["reason"]] += 1
    for rec in iter_jsonl_gz(run.text):
        meta = rec["metadata"]
        e = by_source[meta["source"]][meta.get("declared_lang") or meta["lang"]]
        nbytes = len(rec["text"].encode("utf-8"))
        e["documents_kept"] += 1
        e["bytes_kept"] += nbytes
        e["kept"][meta["split"]]["documents"] += 1
        e["kept"][meta["split"]]["bytes"] += nbytes
        e["pii_redactions"].update(meta.get("pii", {}))
        if url := meta.get("url"):
            e["domains"][domain_of(url)] += nbytes

    sources_out, lang_train_bytes, totals = {}, Counter(), Counter()
    spec_by_name = {}
    for s in specs:
        spec_by_name.setdefault(s.name, s)
    for source, langs in sorted(by_source.items()):
        spec = spec_by_name.get(source)
        out_langs = {}
        for lang, e in sorted(langs.items()):
            removed = {step: dict(sorted(r.items())) for step, r in sorted(e["removed"].items())}
            n_removed = sum(sum(r.values()) for r in removed.values())
            n_quarantined = sum(e["quarantined"].values())
            contaminated = sum(removed.get("decontamination", {}).values())
            exact = sum(removed.get("exact-dedup", {}).values())
            near = sum(removed.get("near-dedup", {}).values())
            before_dedup = e["documents_kept"] + exact + near
            out_langs[lang] = {
                "documents_in": e["documents_in"], "bytes_in": e["bytes_in"],
                "documents_kept": e["documents_kept"], "bytes_kept": e["bytes_kept"], "kept": e["kept"],
                "documents_removed": n_removed, "removed": removed, "documents_quarantined": n_quarantined,
                "quarantined": dict(sorted(e["quarantined"].items())), "contaminated": contaminated,
                "balanced": e["documents_in"] == e["documents_kept"] + n_removed + n_quarantined,
                "dedup": {"exact_removed": exact, "near_removed": near,
                          "exact_ratio": exact / before_dedup if before_dedup else 0.0,
                          "near_ratio": near / before_dedup if before_dedup else 0.0},
                "pii_redactions": dict(sorted(e["pii_redactions"].items())),
                "top_domains": [{"domain": d, "bytes": b} for d, b in e["domains"].most_common(TOP_DOMAINS)],
            }
            if lang != "und":
                lang_train_bytes[lang] += e["kept"]["train"]["bytes"]
            totals.update(documents_in=e["documents_in"], documents_kept=e["documents_kept"],
                          documents_removed=n_removed, documents_quarantined=n_quarantined,
                          contaminated=contaminated, bytes_in=e["bytes_in"], bytes_kept=e["bytes_kept"])
        sources_out[source] = {
            **({k: v for k, v in spec.as_record().items()} if spec else {}),
            "declared_licence": spec.licence if spec else "unknown",
            "collection_date": spec.collected if spec else None,
            "languages": out_langs,
        }
    manifest = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config_record(cfg),
        "stage_seconds": timings or {},
        "totals": dict(totals) | {"balanced": totals["documents_in"] == totals["documents_kept"]
                                  + totals["documents_removed"] + totals["documents_quarantined"]},
        "damaged_inputs": sorted(damaged, key=lambda d: (str(d["source"]), str(d["location"]))),
        "mix": {"alpha": cfg.alpha, "basis": "train bytes (tokens once tokenized)",
                "weights": temperature_weights(dict(lang_train_bytes), cfg.alpha)},
        "sources": sources_out,
        "optout": _optout_record(cfg),
        "decontamination": _decont_record(run, cfg, totals["contaminated"]),
    }
    write_json(run.manifest, manifest)
    return manifest


def _optout_record(cfg) -> dict:
    """The opt-out signals honoured (for the AI Act training-content summary): the AI crawler list with its source
    and version, every agent checked (the lab's own crawler first), robots.txt sites and blocklist."""
    from vernacular.data.pipeline import _robots, ai_agents

    agents = load_ai_agents()
    version = f"ai.robots.txt {agents.source.get('commit')} ({agents.source.get('commit_date')})"
    return {"ai_agents": agents.record(), "list_version": version, "agents": list(ai_agents(cfg)), "crawler_name": cfg.crawler_name, "robots_sites": sorted(_robots(cfg)),
            "blocklist": cfg.blocklist}


def _decont_record(run: RunDir, cfg, contaminated: int) -> dict:
    eval_sets = {}  # one lines.<rank>.json per indexing task
    for f in sorted((run.data / "work" / "decont").glob("lines.*.json")):
        eval_sets.update(read_json(f))
    return {"method": "word n-gram overlap (datatrove NGramsDecontFilter; index built from local eval text files)",
            "n_grams": cfg.decont_ngrams, "eval_sets": dict(sorted(eval_sets.items())),
            "documents_contaminated": contaminated}


def summary_rows(manifest: dict) -> list[tuple]:
    """(source, lang, in, kept, train, val, removed, quarantined, top reasons) rows for the CLI table."""
    rows = []
    for source, s in manifest["sources"].items():
        for lang, e in s["languages"].items():
            reasons = Counter(e["quarantined"])
            for step, r in e["removed"].items():
                for reason, n in r.items():
                    reasons[reason] += n
            top = ", ".join(f"{k} {v}" for k, v in reasons.most_common(3))
            rows.append((source, lang, e["documents_in"], e["documents_kept"], e["kept"]["train"]["documents"],
                         e["kept"]["val"]["documents"], e["documents_removed"], e["documents_quarantined"], top))
    return rows
