"""Opt-out agents as data (the shipped ai.robots.txt list, the lab's own crawler) and n-gram decontamination against
evaluation texts, through `vernacular data`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vernacular.data import cli as data_cli
from vernacular.data.manifest import iter_jsonl_gz
from vernacular.data.robots import AI_USER_AGENTS, RobotsTxt, load_ai_agents, main as robots_main, update_agents
from vernacular.data.text import iter_texts
from vernacular.run import RunDir, read_json

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "data" / "ntrex-sample"  # NTREX news, CC BY-SA 4.0
FLORES = HERE / "data" / "flores-sample"  # FLORES-200 sentences, CC BY-SA 4.0 (evaluation text)


def test_shipped_agent_list_has_its_source_and_catches_training_crawlers():
    agents = load_ai_agents()
    assert len(agents.agents) >= 100 and agents.agents == AI_USER_AGENTS
    assert {"Ai2Bot-Dolma", "cohere-training-data-crawler", "DeepSeekBot", "GPTBot", "CCBot"} <= set(agents.agents)
    rec = agents.record()
    assert rec["licence"] == "MIT" and len(rec["commit"]) == 40 and "ai-robots-txt/ai.robots.txt" in rec["repository"]
    assert "MIT License" in (Path(__file__).resolve().parents[1] / "vernacular/data/ai_robots/LICENSE").read_text()
    dolma = RobotsTxt.parse("User-agent: Ai2Bot-Dolma\nDisallow: /\n\nUser-agent: *\nAllow: /\n")
    assert dolma.opted_out("https://example.org/a") == "Ai2Bot-Dolma"
    everyone = RobotsTxt.parse("User-agent: *\nDisallow: /private/\n")
    assert everyone.opted_out("https://example.org/private/x") == "*" and everyone.opted_out("https://example.org/") is None
    own = RobotsTxt.parse("User-agent: VernacularBot\nDisallow: /\n")
    assert own.opted_out("https://example.org/a") is None
    assert own.opted_out("https://example.org/a", ("VernacularBot", *AI_USER_AGENTS)) == "VernacularBot"


def test_agent_list_update_from_a_file(tmp_path, capsys):
    new = tmp_path / "robots.json"
    new.write_text(json.dumps({"GPTBot": {"operator": "OpenAI"}, "NewTrainingBot": {"operator": "x"}}))
    folder = tmp_path / "list"
    assert robots_main(["update", "--from", str(new), "--folder", str(folder)]) == 0
    assert "2 agents" in capsys.readouterr().out
    got = load_ai_agents(folder)
    assert got.agents == ("GPTBot", "NewTrainingBot") and got.source["licence"] == "MIT"
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="robots.json"):
        update_agents(str(tmp_path / "bad.json"), folder)


def test_optout_and_decontamination_through_the_cli(tmp_path, capsys):
    eng = (SAMPLE / "eng.txt").read_text(encoding="utf-8").splitlines()
    flores = (FLORES / "eng.txt").read_text(encoding="utf-8").splitlines()
    # a news document that quotes a FLORES test sentence in its middle: contaminated
    contaminated = " ".join([eng[100], eng[101], flores[0], eng[102]])
    records = [{"text": " ".join(eng[i:i + 3]), "url": f"https://news{i}.example.org/a"} for i in range(0, 60, 3)]
    records += [
        {"text": " ".join(eng[60:63]), "url": "https://dolma-blocked.example.org/story"},  # blocks Ai2Bot-Dolma
        {"text": " ".join(eng[63:66]), "url": "https://own-blocked.example.org/story"},  # blocks our crawler
        {"text": contaminated, "url": "https://news-x.example.org/b"},
        {"text": " ".join(eng[66:69]), "url": "https://own-blocked.example.org/open/ok"},  # allowed path: kept
    ]
    src = tmp_path / "eng.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "dolma-blocked.example.org.txt").write_text("User-agent: Ai2Bot-Dolma\nDisallow: /\n")
    (tmp_path / "own-blocked.example.org.txt").write_text(
        "User-agent: VernacularBot\nDisallow: /\nAllow: /open/\n\nUser-agent: *\nAllow: /\n")
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    args = parser.parse_args(["--run-dir", str(tmp_path / "run"), "--source", f"{src}::name=web", "--tasks", "1", "--workers",
                              "1", "--no-progress", "--robots", str(tmp_path / "dolma-blocked.example.org.txt"),
                              "--robots", str(tmp_path / "own-blocked.example.org.txt"), "--crawler-name",
                              "VernacularBot", "--decontaminate", str(FLORES), "--no-default-decontamination"])
    assert data_cli.main(args) == 0
    assert "1 documents removed as contaminated" in capsys.readouterr().out
    rd = RunDir(tmp_path / "run")
    rejects = {r["metadata"]["url"]: r["metadata"] for r in iter_jsonl_gz(rd.rejects)}
    assert rejects["https://dolma-blocked.example.org/story"]["reason"] == "robots:Ai2Bot-Dolma"
    assert rejects["https://own-blocked.example.org/story"]["reason"] == "robots:VernacularBot"
    bad = rejects["https://news-x.example.org/b"]
    assert bad["step"] == "decontamination" and bad["reason"] == "contaminated"
    assert bad["contaminated_task"] == "flores-sample/eng"
    from datatrove.utils.text import TextNormConfig, simplify_text

    assert bad["contaminated_ngram"] in simplify_text(flores[0], TextNormConfig())  # datatrove's normalized text
    kept = [t for split in ("train", "val") for _, t in iter_texts(rd, split)]
    assert " ".join(eng[66:69]) in kept and len(kept) == 21 and not any(flores[0] in t for t in kept)

    manifest = read_json(rd.manifest)
    assert manifest["totals"]["contaminated"] == 1 and manifest["totals"]["balanced"]
    assert manifest["sources"]["web"]["languages"]["eng"]["contaminated"] == 1
    assert manifest["optout"]["crawler_name"] == "VernacularBot"
    assert manifest["optout"]["ai_agents"]["agents"] >= 100 and len(manifest["optout"]["ai_agents"]["commit"]) == 40
    assert manifest["optout"]["agents"][:2] == ["VernacularBot", "AddSearchBot"]  # own crawler first, then the list
    assert "738c80d" in manifest["optout"]["list_version"]
    decont = manifest["decontamination"]
    assert decont["n_grams"] == 8 and decont["eval_sets"]["flores-sample/eng"]["lines"] == 5


def test_decontamination_index_is_cached_by_content(tmp_path, monkeypatch):
    """The index of an evaluation file is built once per content: a rerun reads it from the cache (same bytes, same
    line counts); a changed file or a damaged cache entry is indexed afresh."""
    from vernacular.data.steps import EvalNGramIndexer

    monkeypatch.setenv("VERNACULAR_CACHE", str(tmp_path / "cache"))
    evals = tmp_path / "evals"
    evals.mkdir()
    (evals / "eng.txt").write_text((FLORES / "eng.txt").read_text(encoding="utf-8"), encoding="utf-8")

    def run(out):
        step = EvalNGramIndexer([("flores/eng", str(evals / "eng.txt"))], str(tmp_path / out), 8)
        list(step.run())
        return (tmp_path / out / "flores__eng.index.hashes").read_bytes(), json.loads(
            (tmp_path / out / "lines.00000.json").read_text())

    first = run("a")
    assert len(first[0]) > 0 and first[1]["flores/eng"]["lines"] == 5
    cached = list((tmp_path / "cache" / "decont").glob("*.npz"))
    assert len(cached) == 1

    def no_indexing(*args):
        raise AssertionError("indexed again")

    with monkeypatch.context() as m:
        m.setattr(EvalNGramIndexer, "index", no_indexing)
        second = run("b")
    assert second[0] == first[0] and second[1]["flores/eng"] | {"path": 0} == first[1]["flores/eng"] | {"path": 0}

    cached[0].write_bytes(cached[0].read_bytes()[:100])  # damaged (cut short): rebuilt, same index
    assert run("c")[0] == first[0]
    (evals / "eng.txt").write_text("one two three four five six seven eight nine\n", encoding="utf-8")
    changed = run("d")
    assert changed[0] != first[0] and changed[1]["flores/eng"]["lines"] == 1
    assert len(list((tmp_path / "cache" / "decont").glob("*.npz"))) == 2
