"""lm-evaluation-harness (pinned 0.4.13) `local-completions` against the live server, fully offline.

Two tiny YAML tasks over 18 FLORES/SIB-200 sentences (evaluation data, a fixture in tests/fixtures/sib200 with its
licence): a rolling-loglikelihood bits-per-byte task (the
echo + logprobs path lm-eval uses for perplexity) and a SIB-200 topic multiple-choice task (context + continuation
loglikelihoods). lm-eval tokenizes through the server's /tokenize and /tokenizer_info ("remote" tokenizer backend),
so nothing is fetched from a model hub.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from serve_helpers import LiveServer, make_run

SIB = Path(__file__).resolve().parent / "fixtures" / "sib200" / "topics.jsonl"

TOPICS = ["entertainment", "geography", "health", "politics", "science/technology", "sports", "travel"]


def write_tasks(folder, n=6):
    records = [json.loads(line) for line in SIB.read_text(encoding="utf-8").splitlines()]
    rows = []
    for lang in ("eng", "deu", "ell"):
        mine = [r for r in records if r["lang"] == lang][:n]
        assert len(mine) == n, f"{SIB} holds fewer than {n} {lang} sentences"
        rows += [{"text": r["text"], "label": TOPICS.index(r["category"])} for r in mine]
    data = folder / "flores.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "bpb.yaml").write_text(
        "task: vernacular_flores_bpb\n" + common + "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    (folder / "topic.yaml").write_text(
        "task: vernacular_sib_topic\n" + common + "output_type: multiple_choice\n"
        'doc_to_text: "{{text}}\\nTopic:"\ndoc_to_target: "{{label}}"\n'
        f"doc_to_choice: {json.dumps([' ' + t for t in TOPICS])}\n"
        "metric_list:\n  - metric: acc\n"
    )
    return len(rows)


def test_lm_eval_local_completions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    import lm_eval
    from lm_eval.tasks import TaskManager

    from vernacular.serve.api import create_app
    from vernacular.serve.engine import Engine
    from vernacular.serve.loading import find_tokenizer_dir, load_model_for_serving
    from vernacular.serve.text import ServingTokenizer

    run = make_run(tmp_path / "run")
    model, ckpt = load_model_for_serving(run)
    engine = Engine(model, ServingTokenizer(find_tokenizer_dir(ckpt, run)), max_batch=8, max_model_len=512)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    n_docs = write_tasks(tasks)
    with LiveServer(create_app(engine, model_name="tiny")) as server:
        out = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={"base_url": f"{server.url}/v1/completions", "model": "tiny", "tokenizer_backend": "remote",
                        "num_concurrent": 4, "max_retries": 1, "max_length": 512},  # fmt: skip
            tasks=["vernacular_flores_bpb", "vernacular_sib_topic"],
            task_manager=TaskManager(include_path=str(tasks)),
            batch_size=1,
            log_samples=False,
        )
    bpb = out["results"]["vernacular_flores_bpb"]
    topic = out["results"]["vernacular_sib_topic"]
    # an untrained model: about log2(vocab) bits per token spread over a few bytes per token; finite, not absurd
    assert 1.0 < bpb["bits_per_byte,none"] < 12.0
    assert bpb["byte_perplexity,none"] == pytest.approx(2 ** bpb["bits_per_byte,none"], rel=1e-6)
    assert math.isfinite(bpb["word_perplexity,none"]) and bpb["word_perplexity,none"] > 1
    assert 0.0 <= topic["acc,none"] <= 1.0
    assert out["n-samples"]["vernacular_sib_topic"]["effective"] == n_docs
