"""The EU AI Act documents of a run, filled from its records (`records.collect`) and a provider file.

- **Public summary of training content** (Art. 53(1)(d)), following the sections of the Commission's template of
  24 July 2025 (Communication C(2025) 8311): 1 general information, 2 list of data sources (2.1 public datasets,
  2.2 private third-party data, 2.3 data crawled by the provider, 2.4 user data, 2.5 synthetic data, 2.6 other),
  3 data processing aspects (3.1 respect of reservations of rights from the TDM exception, 3.2 removal of illegal
  content, 3.3 other information).
- **Technical documentation** following Annex XI, Section 1 (general description; design, training process, data,
  computational resources, energy).
- **Copyright policy** (Art. 53(1)(c)): the opt-out mechanisms the run actually applied.

What no record can hold (provider name and contact, model name and release date, licence, intended tasks,
acceptable use) comes from the provider TOML; every such field left empty is listed under `missing`, never invented.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any

from vernacular.compliance.records import RunRecords, known_dataset

PROVIDER_TEMPLATE = """\
# Provider information for the EU AI Act documents: `vernacular compliance --run-dir R --provider provider.toml`.
# Leave a field empty if it is not decided yet: the documents list it as missing, they never invent it.

[provider]
name = ""                       # legal name of the provider placing the model on the EU market
contact = ""                    # postal address and e-mail
authorised_representative = ""  # name and contact of the EU representative (Art. 54), for providers outside the EU

[model]
name = ""                       # versioned model name, e.g. "Vernacular-EU-Tiny-0.1"
release_date = ""               # date of placement on the Union market, YYYY-MM-DD
licence = ""                    # e.g. "Apache-2.0"
distribution = ""               # e.g. "weights on the Hugging Face Hub; OpenAI-compatible API"
intended_tasks = ""             # what the model is for, and the AI systems it can be integrated in
acceptable_use = ""             # acceptable-use policy, or where it is published
code_of_practice_signatory = "" # "yes" or "no": signatory of the GPAI Code of Practice
"""

REQUIRED = {
    "provider": ("name", "contact"),
    "model": ("name", "release_date", "licence", "distribution", "intended_tasks", "acceptable_use"),
}
OPTIONAL = {"provider": ("authorised_representative",), "model": ("code_of_practice_signatory",)}


def load_provider(path: str | Path | None) -> tuple[dict[str, dict[str, str]], list[str]]:
    """(provider fields, missing field names as `section.field`). No file: every required field is missing."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"provider file {path} not found; create one with `vernacular compliance "
                                    f"--init-provider {path}`")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
    out: dict[str, dict[str, str]] = {}
    missing = []
    for section, fields in {**REQUIRED}.items():
        got = data.get(section) or {}
        out[section] = {f: str(got.get(f, "") or "").strip() for f in fields + OPTIONAL.get(section, ())}
        for f in OPTIONAL.get(section, ()):
            out[section][f] = out[section][f] or None  # optional: shown as "—", not as missing
        missing += [f"{section}.{f}" for f in fields if not out[section][f]]
    return out, missing


def _or_missing(value: str) -> str:
    return value if value else "MISSING (fill in the provider file)"


def size_band(tokens: int) -> str:
    """The template's size bands for text."""
    if tokens < 1e9:
        return "Less than 1 billion tokens"
    if tokens <= 10e12:
        return "1 billion to 10 trillion tokens"
    return "More than 10 trillion tokens"


def _removed(manifest: dict) -> dict[str, dict[str, int]]:
    """{step: {reason: documents}} over all sources and languages."""
    out: dict[str, dict[str, int]] = {}
    for src in (manifest or {}).get("sources", {}).values():
        for entry in src.get("languages", {}).values():
            # the data manifest counts quarantined documents (damaged or malformed input) apart from removals
            for step, reasons in [*entry.get("removed", {}).items(), ("quarantine", entry.get("quarantined", {}))]:
                for reason, n in reasons.items():
                    out.setdefault(step, {})[reason] = out.setdefault(step, {}).get(reason, 0) + n
    return out


def _pii(manifest: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for src in (manifest or {}).get("sources", {}).values():
        for entry in src.get("languages", {}).values():
            for kind, n in (entry.get("pii_redactions") or {}).items():
                out[kind] = out.get(kind, 0) + n
    return out


def _domains(manifest: dict, k: int = 20) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for src in (manifest or {}).get("sources", {}).values():
        for entry in src.get("languages", {}).values():
            for item in entry.get("top_domains") or []:
                domain, n = (item[0], item[1]) if isinstance(item, (list, tuple)) else (item.get("domain"), item.get("bytes", 0))
                counts[domain] = counts.get(domain, 0) + n
    return sorted(counts.items(), key=lambda x: -x[1])[:k]


def training_flops(rec: RunRecords) -> dict[str, float]:
    """Training FLOPs per stage: tokens trained x FLOPs/token from the accounting module (vernacular.model.info)."""
    from vernacular.model.config import ModelConfig
    from vernacular.model.info import flops_per_token

    out = {}
    for stage, state in (("pretrain", rec.pretrain), ("sft", rec.sft)):
        if state and state.get("model_config"):
            cfg = ModelConfig.from_dict(state["model_config"])
            seq = (state.get("train_config") or {}).get("seq_len") or cfg.max_position_embeddings
            out[stage] = flops_per_token(cfg, seq) * (state.get("tokens") or 0)
    out["total"] = sum(out.values())
    return out


def _languages(rec: RunRecords) -> list[dict[str, str]]:
    from vernacular.data.languages import LANGUAGES

    langs = sorted(set().union(*(rec.tokens.get(s, {}).keys() for s in ("train", "val")))) if rec.tokens else []
    return [{"iso639_3": c, "iso639_1": LANGUAGES.get(c, ("", c))[0], "name": LANGUAGES.get(c, ("", c))[1]}
            for c in langs]


def _sft_sources(rec: RunRecords) -> list[dict[str, Any]]:
    """Fine-tuning conversations; the embedded demo set is described by its own data card."""
    cfg = rec.config.get("sft") or {}
    data = cfg.get("data") or []
    if isinstance(data, str):
        data = [data]
    out = []
    for d in data if rec.sft else []:
        demo = "sft/demo" in str(d).replace("\\", "/")
        out.append({"source": "Vernacular demo conversations" if demo else str(d),
                    "licence": "CC0-1.0" if demo else "see the source",
                    "content": "multilingual chat conversations written for the project by an LLM assistant "
                               "(see vernacular/sft/demo/README.md)"
                    if demo else "conversations"})
    return out


def _synthetic(sft_sources: list[dict[str, Any]]) -> dict[str, Any]:
    demo = [s for s in sft_sources if s["source"] == "Vernacular demo conversations"]
    if demo:
        return {"used": True, "data": "Vernacular demo conversations (fine-tuning, CC0)",
                "models": "written by a large language model used as the project's development assistant "
                          "(see vernacular/sft/demo/README.md)"}
    return {"used": False, "note": "no model-generated training data is recorded for this run"}


def public_summary(rec: RunRecords, provider: dict[str, dict[str, str]], missing: list[str]) -> dict[str, Any]:
    """The public summary of training content as a dict whose keys follow the template's sections."""
    m = rec.manifest or {}
    sources = m.get("sources", {})
    train_tokens = sum(rec.tokens.get("train", {}).values())
    dates = [s.get("collection_date") or s.get("collected") for s in sources.values()]
    dates = [d for d in dates if d]
    public, own_crawl, other = [], [], []
    for name, s in sources.items():
        known = known_dataset(name, s.get("location", ""))
        langs = s.get("languages", {})
        entry = {
            "name": name, "identifier": (known or {}).get("identifier", s.get("location")),
            "url": (known or {}).get("url"), "kind": s.get("kind"), "licence": s.get("declared_licence") or s.get("licence"),
            "collection_period": s.get("collection_date") or s.get("collected"),
            "content": (known or {}).get("content", "text"),
            "documents_kept": sum(e.get("documents_kept", 0) for e in langs.values()),
            "bytes_kept": sum(e.get("bytes_kept", 0) for e in langs.values()),
        }
        (public if s.get("kind") in ("hf", "txt", "jsonl", "parquet", "demo") else other).append(entry)
    total_bytes = sum(e["bytes_kept"] for e in public + other) or 1
    for e in public + other:
        e["share_of_text"] = e["bytes_kept"] / total_bytes
    removed = _removed(m)
    robots = (m.get("config") or {}).get("robots") or []
    blocklist = (m.get("config") or {}).get("blocklist")
    optout = m.get("optout") or {}
    sft_sources = _sft_sources(rec)
    summary = {
        "template": "EU AI Act Art. 53(1)(d) public summary of training content, Commission template of 24 July 2025",
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "missing": missing,
        "1_general_information": {
            "1.1_provider": {"name": provider["provider"]["name"], "contact": provider["provider"]["contact"],
                             "authorised_representative": provider["provider"]["authorised_representative"]},
            "1.2_model": {"versioned_name": provider["model"]["name"],
                          "model_dependencies": f"fine-tuned from {rec.base_model}" if rec.base_model
                          else "none: pretrained from scratch in this run",
                          "date_of_placement_on_market": provider["model"]["release_date"]},
            "1.3_modalities_and_size": {
                "modality": "text", "training_data_size_band": size_band(train_tokens),
                "training_tokens_in_shards": train_tokens,
                "content_types": sorted({e["content"] for e in public + other}),
                "latest_collection_date": max(dates) if dates else None,
                "languages": _languages(rec),
            },
        },
        "2_data_sources": {
            "2.1_publicly_available_datasets": {"used": bool(public), "datasets": public},
            "2.2_private_third_party_data": {"used": False, "note": "the run's data manifest lists no licensed or private "
                                             "third-party source"},
            "2.3_data_crawled_by_provider": {"used": bool(own_crawl), "crawler_name": optout.get("crawler_name"),
                                             "note": "Vernacular does not crawl; web text comes from the public datasets "
                                                     "listed in 2.1", "most_relevant_domains": _domains(m)},
            "2.4_user_data": {"used": False, "note": "the run's data manifest lists no user-data source"},
            "2.5_synthetic_data": _synthetic(sft_sources),
            "2.6_other_sources": {"used": bool(sft_sources or other), "fine_tuning_data": sft_sources, "other": other},
        },
        "3_data_processing": {
            "3.1_tdm_opt_out": {
                "robots_txt_files": robots, "robots_txt_agents_honoured": optout.get("agents") or optout.get("agent_list"),
                "agent_list_version": optout.get("list_version") or optout.get("version"),
                "blocklist": blocklist, "documents_removed": removed.get("optout", {}),
            },
            "3.2_illegal_content": {
                "measures": "language identification, Gopher/FineWeb-2-style quality filters and malformed-input "
                            "quarantine; no dedicated illegal-content classifier was applied in this run",
                "documents_removed": {k: v for k, v in removed.items() if k in ("quarantine", "language", "quality")},
            },
            "3.3_other": {
                "pii_redactions": _pii(m),
                "deduplication_removed": {k: v for k, v in removed.items() if "dedup" in k},
                "decontamination_removed": {k: v for k, v in removed.items() if "contam" in k},
            },
        },
    }
    return summary


def technical_documentation(rec: RunRecords, provider: dict[str, dict[str, str]], missing: list[str]) -> dict[str, Any]:
    """Annex XI, Section 1, as a dict."""
    from vernacular.model.info import parameter_breakdown

    cfg = rec.model_config
    params = parameter_breakdown(cfg) if cfg else None
    flops = training_flops(rec)
    energy = {stage: {"energy_kwh": e.get("energy_kwh"), "emissions_kg": e.get("emissions_kg"),
                      "duration_s": e.get("duration_s"),
                      "measurement": sorted({f"cpu {s.get('cpu_measurement')}, gpu {s.get('gpu_measurement')}, "
                                             f"ram {s.get('ram_measurement')}" for s in e.get("segments", [])
                                             if "energy_kwh" in s}),
                      "emissions_factor_kg_per_kwh": next((s.get("emissions_factor_kg_per_kwh") for s in e.get("segments", [])
                                                           if s.get("emissions_factor_kg_per_kwh")), None),
                      "country": next((s.get("country_iso_code") for s in e.get("segments", []) if s.get("country_iso_code")), None),
                      "tool": "codecarbon " + str(next((s.get("codecarbon_version") for s in e.get("segments", [])
                                                        if s.get("codecarbon_version")), "")),
                      "hardware": e.get("hardware"), "world_size": e.get("world_size")}
              for stage, e in rec.energy.items()}
    pre = (rec.config.get("pretrain") or {})
    training = {stage: {"steps": s.get("step"), "tokens": s.get("tokens"), "wall_clock_s": s.get("elapsed_s"),
                        "world_size": s.get("world_size"),
                        "optimizer": (s.get("train_config") or {}).get("optimizer"),
                        "schedule": (s.get("train_config") or {}).get("schedule"),
                        "lr": (s.get("train_config") or {}).get("lr"),
                        "seq_len": (s.get("train_config") or {}).get("seq_len")}
                for stage, s in (("pretrain", rec.pretrain), ("sft", rec.sft)) if s}
    m = rec.manifest or {}
    return {
        "template": "EU AI Act Annex XI, Section 1: technical documentation of a general-purpose AI model",
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "missing": missing,
        "1_general_description": {
            "a_intended_tasks": provider["model"]["intended_tasks"],
            "b_acceptable_use_policy": provider["model"]["acceptable_use"],
            "c_release_date_and_distribution": {"release_date": provider["model"]["release_date"],
                                                "distribution": provider["model"]["distribution"]},
            "d_architecture_and_parameters": {
                "architecture": "decoder-only transformer, DeepSeek-V3 style: Multi-head Latent Attention, DeepSeekMoE "
                                "(sigmoid routing, auxiliary-loss-free balancing), multi-token prediction",
                "total_parameters": params.total if params else None,
                "active_parameters_per_token": params.active if params else None,
                "mtp_parameters": params.mtp_total if params else None,
                "config": cfg.to_dict() if cfg else None,
            },
            "e_modalities": {"input": "text", "output": "text",
                             "context_length": cfg.max_position_embeddings if cfg else None,
                             "training_sequence_length": pre.get("seq_len")},
            "f_licence": provider["model"]["licence"],
        },
        "2_detailed_description": {
            "b_design_and_training": {
                "method": "self-supervised next-token (and multi-token) prediction pretraining"
                          + (", then supervised fine-tuning on conversations (loss on assistant tokens)" if rec.sft else ""),
                "stages": training,
            },
            "c_data": {
                "provenance": {name: {"kind": s.get("kind"), "licence": s.get("declared_licence") or s.get("licence"),
                                      "collected": s.get("collection_date")} for name, s in m.get("sources", {}).items()},
                "curation": "NFC normalisation, language identification, quality filters, exact and MinHash "
                            "deduplication, PII redaction, TDM opt-outs (see the public summary, section 3)",
                "documents": m.get("totals"),
                "tokens_in_shards": rec.tokens,
                "tokenizer": {k: (rec.tokenizer or {}).get(k) for k in ("method", "vocab_size", "languages")},
            },
            "d_computational_resources": {
                "training_flops": flops, "flops_accounting": "vernacular.model.info.flops_per_token x tokens trained "
                "(6 x active non-embedding params + lm_head + attention, + MTP)",
                "training_time_s": {k: v["wall_clock_s"] for k, v in training.items()},
                "hardware": {k: v.get("hardware") for k, v in energy.items()},
            },
            "e_energy": energy or "not measured (no metrics/energy_<stage>.json: train with this version of Vernacular)",
        },
        "evaluation": rec.evaluation,
    }


def _md_value(v: Any) -> str:
    if v == "":
        return "MISSING"
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)) and v and isinstance(v[0], dict):
        keys = list(v[0].keys())
        rows = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        rows += ["| " + " | ".join(_md_value(x.get(k)) for k in keys) + " |" for x in v]
        return "\n\n" + "\n".join(rows) + "\n"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_md_value(x)}" for k, x in v.items()) if v else "none"
    if isinstance(v, (list, tuple)):
        return ", ".join(_md_value(x) for x in v) if v else "none"
    return str(v)


def to_markdown(doc: dict[str, Any], title: str) -> str:
    """Sections become headings, fields become `- **field**: value` lines (tables for lists of records)."""
    lines = [f"# {title}", "", f"_{doc['template']}. Generated {doc['generated']} by `vernacular compliance` from the "
                                "run's records._", ""]
    if doc.get("missing"):
        lines += ["**Missing provider information** (fill in the provider file and rerun): "
                  + ", ".join(f"`{m}`" for m in doc["missing"]), ""]

    def walk(d: dict, depth: int):
        for key, value in d.items():
            if key in ("template", "generated", "missing"):
                continue
            label = key.replace("_", " ", 1) if key[:1].isdigit() or key[:2] in ("a_", "b_", "c_", "d_", "e_", "f_") else key
            label = label.replace("_", " ")
            if isinstance(value, dict) and depth < 2 and any(isinstance(x, (dict, list)) for x in value.values()):
                lines.extend(["", "#" * (depth + 2) + " " + label, ""])
                walk(value, depth + 1)
            else:
                lines.append(f"- **{label}**: {_md_value(value)}")

    walk(doc, 0)
    return "\n".join(lines) + "\n"


def copyright_policy(rec: RunRecords, provider: dict[str, dict[str, str]]) -> str:
    """Art. 53(1)(c): the policy to comply with Union copyright law, stating what this run applied."""
    m = rec.manifest or {}
    cfg = m.get("config") or {}
    removed = _removed(m).get("optout", {})
    optout = m.get("optout") or {}
    agents = optout.get("agents") or optout.get("agent_list")
    name = provider["provider"]["name"] or "MISSING: provider name"
    lines = [
        "# Copyright policy", "",
        f"Provider: {name}. Model: {provider['model']['name'] or 'MISSING: model name'}.", "",
        "This policy describes how the training data of this model respects reservations of rights under Art. 4(3) of "
        "Directive (EU) 2019/790 (text-and-data-mining opt-outs), as required by Art. 53(1)(c) of the AI Act. It is "
        "generated from the run's data manifest, so it states what was actually applied.", "",
        "## Opt-out mechanisms applied", "",
        f"- **robots.txt** (RFC 9309) of the source sites, checked for AI and training crawler user agents"
        + (f" ({len(agents)} agents" + (f", list version {optout.get('list_version') or optout.get('version')}" if optout.get('list_version') or optout.get('version') else "") + ")" if agents else "")
        + f": robots.txt files supplied for {len(cfg.get('robots') or [])} site(s); a disallow for any listed agent "
          "removes the page.",
        f"- **Domain blocklist** of rights holders who reserved their rights: {cfg.get('blocklist') or 'none supplied for this run'}.",
        f"- **Documents removed as opted out**: {sum(removed.values())}" + (f" ({_md_value(removed)})" if removed else "") + ".",
        f"- **Own crawler**: {optout.get('crawler_name') or 'none; this run used published datasets only'}.",
        "", "## Sources and licences", "",
    ]
    for src, s in m.get("sources", {}).items():
        lines.append(f"- `{src}`: licence {s.get('declared_licence') or s.get('licence') or 'unknown'}, collected "
                     f"{s.get('collection_date') or 'unknown'}")
    lines += ["", "## Complaints", "",
              f"Rights holders can contact {provider['provider']['contact'] or 'MISSING: provider contact'} to report "
              "content they believe was used despite a reservation of rights; such content is added to the blocklist "
              "and removed from future training runs.", ""]
    return "\n".join(lines)
