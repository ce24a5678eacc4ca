"""`vernacular compliance`: every number in the AI Act documents equals the run's own records."""

from __future__ import annotations

import json
import math

import pytest
from safetensors import safe_open

from test_train_support import TINY, make_run
from vernacular.cli import main

COMMON = ["--batch-size", "4", "--seq-len", "32", "--eval-batches", "1", "--warmup", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("compliance") / "run", lines=120)
    assert main(["pretrain", "--run-dir", str(run), "--config", str(run / "model.json"), "--steps", "3", *COMMON]) == 0
    return run


def test_documents_match_the_records(trained_run, tmp_path, capsys):
    from vernacular.model import ModelConfig, build_model
    from vernacular.model.info import flops_per_token
    from vernacular.train.checkpoint import latest_checkpoint

    provider = tmp_path / "provider.toml"
    assert main(["compliance", "--init-provider", str(provider)]) == 0
    text = provider.read_text().replace('name = ""                       # legal', 'name = "Example Lab gGmbH"  # legal', 1)
    provider.write_text(text)
    assert main(["compliance", "--run-dir", str(trained_run), "--provider", str(provider)]) == 0
    err = capsys.readouterr().err
    report = trained_run / "report"
    summary = json.loads((report / "training_content_summary.json").read_text())
    annex = json.loads((report / "annex_xi_technical_documentation.json").read_text())
    for name in ("training_content_summary.md", "annex_xi_technical_documentation.md", "copyright_policy.md"):
        assert (report / name).read_text().strip()

    # provider fields: the one given is used, every empty required one is listed as missing, nothing invented
    assert summary["1_general_information"]["1.1_provider"]["name"] == "Example Lab gGmbH"
    assert "provider.name" not in summary["missing"] and "provider.contact" in summary["missing"]
    assert set(summary["missing"]) == set(annex["missing"]) and "model.release_date" in err
    assert "MISSING" in (report / "training_content_summary.md").read_text()

    # token counts from the shards (uint32 ids), languages from the shards
    shard_tokens = sum((p.stat().st_size // 4) for p in (trained_run / "data" / "tokens" / "train").glob("*.ds"))
    size = summary["1_general_information"]["1.3_modalities_and_size"]
    assert size["training_tokens_in_shards"] == shard_tokens and size["training_data_size_band"].startswith("Less than 1")
    assert [l["iso639_3"] for l in size["languages"]] == ["deu", "fra", "pol"]

    # parameters from the model itself, FLOPs from the accounting module, tokens from the checkpoint
    ckpt = latest_checkpoint(trained_run / "checkpoints")
    state = json.loads((ckpt / "state.json").read_text())
    config = ModelConfig.from_dict(state["model_config"])
    model = build_model(config)
    d = annex["1_general_description"]["d_architecture_and_parameters"]
    assert d["total_parameters"] == model.num_parameters() and d["active_parameters_per_token"] == model.num_parameters(active=True)
    with safe_open(ckpt / "model.safetensors", "pt") as f:
        stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()
                     if not k.startswith("mtp.") and "e_score_correction_bias" not in k)  # a buffer, not a weight
    assert d["total_parameters"] == stored
    flops = annex["2_detailed_description"]["d_computational_resources"]["training_flops"]
    assert flops["pretrain"] == flops_per_token(config, 32) * state["tokens"] == flops["total"] and state["tokens"] == 3 * 4 * 32

    # removals from the manifest
    manifest = json.loads((trained_run / "data" / "manifest.json").read_text())
    removed = {}
    for src in manifest["sources"].values():
        for entry in src["languages"].values():
            for step, reasons in entry["removed"].items():
                for r, n in reasons.items():
                    removed.setdefault(step, {}).setdefault(r, 0)
                    removed[step][r] += n
    proc = summary["3_data_processing"]
    assert proc["3.1_tdm_opt_out"]["documents_removed"] == removed.get("optout", {})
    assert proc["3.2_illegal_content"]["documents_removed"] == {k: v for k, v in removed.items()
                                                                if k in ("quarantine", "language", "quality")}
    licences = {s["licence"] for s in summary["2_data_sources"]["2.1_publicly_available_datasets"]["datasets"]}
    assert licences == {src.get("declared_licence") for src in manifest["sources"].values()}


def test_energy_is_recorded_during_pretraining(trained_run):
    record = json.loads((trained_run / "metrics" / "energy_pretrain.json").read_text())
    seg = record["segments"][-1]
    assert "error" not in seg, seg
    assert record["energy_kwh"] > 0 and seg["duration_s"] > 0
    assert seg["cpu_measurement"].startswith(("measured", "estimated"))  # never an estimate presented as measured
    assert seg["emissions_factor_kg_per_kwh"] > 0 and seg["country_iso_code"]
    assert record["hardware"]["cpu_cores"] >= 1


def test_model_card_metadata(trained_run):
    from vernacular.compliance.documents import load_provider
    from vernacular.compliance.model_card import card_fields, model_card
    from vernacular.compliance.records import collect

    provider, _ = load_provider(None)
    card = model_card(collect(trained_run), provider)
    fields = card_fields(card)
    assert fields["language"] == ["de", "fr", "pl"] and fields["license"] == "other"
    assert fields["pipeline_tag"] == "text-generation" and "ai_act/training_content_summary.md" in card


def test_missing_run_and_bad_provider_are_clear(tmp_path, capsys):
    assert main(["compliance", "--run-dir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "p.toml"
    bad.write_text("[provider\nname=")
    (tmp_path / "r").mkdir()
    assert main(["compliance", "--run-dir", str(tmp_path / "r"), "--provider", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_report_card_and_export_model_card(trained_run):
    from transformers import AutoConfig

    from vernacular.compliance.model_card import card_fields

    assert main(["report", "--run-dir", str(trained_run)]) == 0
    report = (trained_run / "report" / "report.md").read_text()
    assert "## Summary" in report and "tokens/s" in report and "energy" in report
    assert "![expert load](expert_load.png)" in report and (trained_run / "report" / "expert_load.png").stat().st_size
    train = [json.loads(x) for x in (trained_run / "metrics" / "train.jsonl").read_text().splitlines()]
    shares = next(r["expert_load"] for r in train if "expert_load" in r)
    assert all(abs(sum(v) - 1) < 1e-4 and len(v) == TINY["n_routed_experts"] for v in shares.values())

    assert main(["export", "hf", "--run-dir", str(trained_run)]) == 0
    out = trained_run / "export" / "hf"
    card = (out / "README.md").read_text()
    assert card_fields(card)["language"] == ["de", "fr", "pl"]
    for name in ("training_content_summary.md", "annex_xi_technical_documentation.md", "copyright_policy.md"):
        assert (out / "ai_act" / name).exists() and f"ai_act/{name}" in card
    assert AutoConfig.from_pretrained(out).model_type == "deepseek_v3"
    assert main(["report", "--run-dir", str(trained_run)]) == 0  # the documents exist now: the report links them
    assert "[Copyright policy (Art. 53(1)(c))](copyright_policy.md)" in (trained_run / "report" / "report.md").read_text()
