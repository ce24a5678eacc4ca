"""The HF export's README.md: a model card with Hugging Face's YAML metadata, filled from the run's records.

Metadata keys follow the Hub's model-card specification (`language` as ISO 639-1 codes, `license`, `datasets`,
`base_model`, `tags`, `pipeline_tag`, `library_name`); the body links the AI Act documents, which the export copies
next to the weights (`ai_act/`), so the folder stays self-describing when uploaded alone.
"""

from __future__ import annotations

from typing import Any

from vernacular.compliance.records import RunRecords, known_dataset


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:"] + [f"- {v}" for v in values] if values else []


def model_card(rec: RunRecords, provider: dict[str, dict[str, str]] | None = None) -> str:
    from vernacular.compliance.documents import _languages, training_flops
    from vernacular.model.info import parameter_breakdown

    provider = provider or {"provider": {}, "model": {}}
    cfg = rec.model_config
    params = parameter_breakdown(cfg) if cfg else None
    langs = _languages(rec)
    hub_ids = []
    for name, s in (rec.manifest or {}).get("sources", {}).items():
        known = known_dataset(name, s.get("location", ""))
        if known and "huggingface.co/datasets/" in known.get("url", ""):
            hub_ids.append(known["url"].split("huggingface.co/datasets/")[1])
    licence = (provider.get("model") or {}).get("licence") or "other"
    base = rec.base_model
    meta = ["---", *_yaml_list("language", [l["iso639_1"] or l["iso639_3"] for l in langs]), f"license: {licence.lower()}",
            *_yaml_list("datasets", hub_ids), *( [f"base_model: {base}"] if base else []),
            "library_name: transformers", "pipeline_tag: text-generation",
            *_yaml_list("tags", ["vernacular", "deepseek_v3", "mixture-of-experts", "multilingual"])]
    ev = rec.evaluation or {}
    agg = ev.get("aggregate") if isinstance(ev, dict) else None
    if isinstance(agg, dict):
        metrics = [f"{k}" for k, v in agg.items() if isinstance(v, (int, float))]
        meta += _yaml_list("metrics", metrics)
    meta.append("---")
    flops = training_flops(rec)
    name = (provider.get("model") or {}).get("name") or "Vernacular model"
    body = [
        f"# {name}", "",
        "A DeepSeek-V3-style Mixture-of-Experts language model (Multi-head Latent Attention, DeepSeekMoE, multi-token "
        "prediction) trained with [Vernacular](https://github.com/) for Europe's languages. It loads in transformers as "
        "`DeepseekV3ForCausalLM`.", "",
        "| | |", "|---|---|",
        f"| parameters | {params.total:,} total, {params.active:,} active per token |" if params else "| parameters | unknown |",
        f"| context | {cfg.max_position_embeddings} tokens |" if cfg else "| context | unknown |",
        f"| languages | {', '.join(l['name'] for l in langs) or 'unknown'} |",
        f"| training tokens | {sum(rec.tokens.get('train', {}).values()):,} in the training shards |",
        f"| training compute | {flops['total']:.3g} FLOPs |",
        f"| chat fine-tuned | {_sft_line(rec.sft)} |", "",
    ]
    if isinstance(agg, dict):
        body += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        body += [f"| {k} | {v:.4f} |" for k, v in agg.items() if isinstance(v, (int, float))]
        body.append("")
    body += ["## EU AI Act documents", "",
             "- [Public summary of training content](ai_act/training_content_summary.md) "
             "([JSON](ai_act/training_content_summary.json))",
             "- [Technical documentation (Annex XI)](ai_act/annex_xi_technical_documentation.md)",
             "- [Copyright policy](ai_act/copyright_policy.md)", ""]
    return "\n".join(meta + [""] + body)


def card_fields(card: str) -> dict[str, Any]:
    """The YAML metadata of a model card as a dict (a tiny reader for tests and tools: lists and scalars only)."""
    head = card.split("---")[1]
    out: dict[str, Any] = {}
    key = None
    for line in head.strip().splitlines():
        if line.startswith("- ") and key:
            out.setdefault(key, []).append(line[2:])
        else:
            key, _, value = line.partition(":")
            if value.strip():
                out[key] = value.strip()
    return out


def write_model_card(run, out) -> None:
    """The export's README.md from the run's records, with the AI Act documents copied to `out/ai_act/` (written
    first if `vernacular compliance` has not run yet; the provider file it last used is used again)."""
    import shutil
    from pathlib import Path

    from vernacular.compliance.cli import write_documents
    from vernacular.compliance.documents import load_provider
    from vernacular.compliance.records import collect
    from vernacular.run import atomic_write_bytes

    provider_path = (run.read_config().get("compliance") or {}).get("provider") or None
    if provider_path and not Path(provider_path).is_file():
        provider_path = None
    if not run.training_content_summary.with_suffix(".md").exists():
        write_documents(run.root, provider_path)
    provider, _ = load_provider(provider_path)
    out = Path(out)
    docs = out / "ai_act"
    docs.mkdir(parents=True, exist_ok=True)
    for src in (run.training_content_summary.with_suffix(".md"), run.training_content_summary.with_suffix(".json"),
                run.technical_documentation.with_suffix(".md"), run.technical_documentation.with_suffix(".json"),
                run.copyright_policy):
        if src.exists():
            shutil.copyfile(src, docs / src.name)
    atomic_write_bytes(out / "README.md", model_card(collect(run.root), provider).encode())


def _sft_line(sft: dict | None) -> str:
    """The model card's fine-tuning cell: no, yes, or yes with the WiSE-FT interpolation and the language DPO the
    weights went through."""
    if not sft:
        return "no"
    wise, dpo = sft.get("wise_ft"), sft.get("language_dpo")
    line = "yes"
    if wise:
        line += (f"; the weights are WiSE-FT {wise['alpha']:g}: {1 - wise['alpha']:g} x the starting model + "
                 f"{wise['alpha']:g} x the fine-tuned one (`vernacular sft --wise-ft`)")
    if dpo:
        line += (f"; then {dpo['steps']} steps of DPO (beta {dpo['beta']:g}) with {dpo['pairs']} of the model's own "
                 f"wrong-language answers as rejected (`vernacular sft --language-dpo`)")
    return line
