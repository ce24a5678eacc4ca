"""`vernacular eval`: the lm-eval model class, the task groups, the offline tasks, the aggregate, and the three-way
cross-check (in-process == lm-eval's `hf` on the HF export == `local-completions` against `vernacular serve`).

Everything runs offline on what the repository ships: the FLORES-200 sentences in vernacular/eval/data and a tiny
random-init model whose tokenizer is trained on the embedded demo corpus (tests/eval_helpers.py).
"""

from __future__ import annotations

import csv
import json

import pytest

from eval_helpers import make_eval_run

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_eval_run(tmp_path_factory.mktemp("eval") / "run")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    for k, v in OFFLINE_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # an empty cache: nothing was ever downloaded
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_home" / "datasets"))


def test_shipped_flores_data_is_aligned():
    from vernacular.data.languages import EU_LANGUAGES
    from vernacular.eval.tasks import utils

    ids = list(csv.DictReader((utils.DATA / "ids.tsv").open(encoding="utf-8"), delimiter="\t"))
    assert len(ids) == 1004 and {r["category"] for r in ids} == set(utils.TOPICS)
    assert sorted(p.stem for p in utils.DATA.glob("*.txt")) == sorted(EU_LANGUAGES)
    for lang in EU_LANGUAGES:
        lines = utils.sentences(lang)
        assert len(lines) == 1004 and all(line.strip() for line in lines)
    assert (utils.DATA.parent / "LICENSE").exists()
    # the same sentences in every language; translation choice holds the aligned translation at `label`
    deu = utils.load_flores200_choice("deu", n=8, seed=1)["test"]
    fra = utils.load_flores200_choice("fra", n=8, seed=1)["test"]
    assert deu["source"] == fra["source"] and deu["label"] == fra["label"]
    for row in deu:
        i = utils.sentences("eng").index(row["source"])
        assert row["choices"][row["label"]] == utils.sentences("deu")[i]
        assert len(set(row["choices"])) == 4


def test_groups_resolve_to_lm_eval_task_names():
    """Every online group's per-language name is a task or group in lm-eval's own registry (its YAML folders)."""
    from pathlib import Path

    import lm_eval
    from lm_eval.tasks import TaskManager

    from vernacular.eval.groups import GROUPS, resolve

    root = Path(lm_eval.__file__).parent / "tasks"
    folders = ["belebele", "global_mmlu/full", "include/default", "xcopa", "xstorycloze", "xwinograd", "arc_mt"]
    manager = TaskManager(include_path=[str(root / f) for f in folders], include_defaults=False)
    known = set(manager.all_tasks)
    online = [t for t in resolve(list(GROUPS)) if not t.group.offline]
    missing = [t.task for t in online if t.task not in known]
    assert not missing, missing
    assert {t.task for t in resolve("belebele-eu-5-shot", ["lv", "deu"])} == {"belebele_lvs_Latn", "belebele_deu_Latn"}
    assert {t.task for t in resolve("include", ["de"])} == {"include_base_44_german"}
    assert [t.task for t in resolve("xcopa")] == ["xcopa_et", "xcopa_it"]
    with pytest.raises(ValueError, match="unknown task group"):
        resolve("no-such-group")


def test_online_group_fails_at_once_offline(offline, run_dir, capsys):
    from vernacular.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "--run-dir", str(run_dir), "--tasks", "belebele-eu-5-shot"])
    assert str(e.value).startswith("error: task group belebele-eu-5-shot needs the dataset facebook/belebele")
    assert "\n" not in str(e.value)


def test_centred_aggregate():
    from vernacular.eval.aggregate import aggregate, task_rows
    from vernacular.eval.groups import resolve

    tasks = resolve("offline", ["deu", "fra"])
    results = {}
    for t in tasks:
        if t.group.name == "sib200-eu":
            results[t.task] = {"acc,none": 1 / 7 if t.lang == "deu" else 1.0}
        elif t.group.name == "flores-200-choice":
            results[t.task] = {"acc_norm,none": 0.625}  # (0.625 - 0.25) / 0.75 = 0.5
        else:
            results[t.task] = {"bits_per_byte,none": 2.0 if t.lang == "deu" else 4.0}
    rows = task_rows(tasks, results)
    agg = aggregate(rows)
    assert agg["languages"]["deu"]["centred"] == pytest.approx((0.0 + 0.5) / 2)
    assert agg["languages"]["fra"]["centred"] == pytest.approx((1.0 + 0.5) / 2)
    assert agg["groups"]["sib200-eu"] == pytest.approx(0.5)
    assert agg["centred"] == pytest.approx((0.5 + 0.5) / 2)
    assert agg["bpb"] == pytest.approx(3.0)


def test_eval_cli_offline_suite(offline, run_dir, capsys):
    from vernacular.cli import main
    from vernacular.run import RunDir, read_json

    code = main(["eval", "--run-dir", str(run_dir), "--languages", "deu,ell", "--limit", "3", "--batch-size", "16"])
    assert code == 0
    out = capsys.readouterr().out
    assert "sib200-eu" in out and "flores-200-choice" in out and "\n ell " in out
    summary = read_json(RunDir(run_dir).eval_results)
    tasks = {r["task"]: r for r in summary["tasks"]}
    assert set(tasks) == {"flores200_bpb_deu_Latn", "flores200_bpb_ell_Grek",
                          "sib200_deu_Latn", "sib200_ell_Grek", "flores200_choice_eng_Latn-deu_Latn",
                          "flores200_choice_eng_Latn-ell_Grek"}  # fmt: skip
    assert all(r["samples"] == 3 for r in summary["tasks"])
    sib = tasks["sib200_deu_Latn"]
    assert sib["centred"] == pytest.approx((sib["value"] - 1 / 7) / (1 - 1 / 7))
    assert 1.0 < tasks["flores200_bpb_deu_Latn"]["value"] < 15.0  # random init: about log2(vocab) bits per token
    assert summary["aggregate"]["bpb"] is not None and summary["aggregate"]["centred"] is not None
    assert "eval" in RunDir(run_dir).read_config()
    from vernacular.report import write_report

    report = write_report(run_dir).read_text(encoding="utf-8")
    assert "## Evaluation" in report and "| deu |" in report and (RunDir(run_dir).report / "eval.png").stat().st_size


def _samples(out, task):
    """(doc_id, request index) -> log-likelihood, from lm-eval's logged samples."""
    ll = {}
    for s in out["samples"][task]:
        for k, resp in enumerate(s["resps"]):
            value = resp[0]
            ll[(s["doc_id"], k)] = float(value[0] if isinstance(value, (list, tuple)) else value)
    return ll


def test_cross_check_in_process_hf_and_server(offline, run_dir, tmp_path):
    """The same log-likelihoods, within 1e-4, from our model class (by its registered name), lm-eval's `hf` model
    on `vernacular export hf`, and `local-completions` against `vernacular serve`'s API."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import vernacular.eval.lm  # noqa: F401  (registers the model class under the name "vernacular")
    from serve_helpers import LiveServer
    from vernacular.cli import main
    from vernacular.eval.groups import TASKS_DIR
    from vernacular.serve.api import create_app
    from vernacular.serve.engine import Engine
    from vernacular.serve.loading import find_tokenizer_dir, load_model_for_serving
    from vernacular.serve.text import ServingTokenizer

    tasks = ["flores200_bpb_deu_Latn", "sib200_ell_Grek"]
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)

    def evaluate(model, model_args):
        return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=manager,
                                       limit=3, batch_size=4, log_samples=True, bootstrap_iters=0)  # fmt: skip

    ours = evaluate("vernacular", {"run_dir": str(run_dir)})
    assert main(["export", "hf", "--run-dir", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    hf = evaluate("hf", {"pretrained": str(tmp_path / "hf"), "dtype": "float32", "device": "cpu"})
    # lm-eval 0.4.13's remote tokenizer takes `bos_token_id or eos_token_id` as the prefix: our BOS id 0 is falsy, so
    # name it (docs/evaluation.md)
    from vernacular.tokenizer import BOS_ID

    model, ckpt = load_model_for_serving(run_dir)
    engine = Engine(model, ServingTokenizer(find_tokenizer_dir(ckpt, run_dir)), max_batch=4, max_model_len=512)
    with LiveServer(create_app(engine, model_name="tiny")) as server:
        api = evaluate("local-completions", {"base_url": f"{server.url}/v1/completions", "model": "tiny",
                                             "tokenizer_backend": "remote", "num_concurrent": 2, "max_retries": 1,
                                             "max_length": 512, "custom_prefix_token_id": BOS_ID})  # fmt: skip
    for task in tasks:
        reference = _samples(ours, task)
        assert len(reference) == (3 if "bpb" in task else 3 * 7)
        for name, other in (("hf", hf), ("local-completions", api)):
            got = _samples(other, task)
            assert got.keys() == reference.keys(), name
            worst = max(abs(got[k] - reference[k]) for k in reference)
            assert worst < 1e-4, f"{name} differs from the in-process model on {task} by {worst}"
    bpb = "bits_per_byte,none"
    assert hf["results"]["flores200_bpb_deu_Latn"][bpb] == pytest.approx(
        ours["results"]["flores200_bpb_deu_Latn"][bpb], abs=1e-5)  # fmt: skip


def test_generate_until_is_greedy_decoding(run_dir):
    """generate_until (through the serving engine) returns the text of plain greedy argmax decoding, cut at `until`."""
    import torch
    from lm_eval.api.instance import Instance

    from vernacular.eval.lm import VernacularLM

    lm = VernacularLM(run_dir=str(run_dir), batch_size=4)
    prompts = ["Die Hauptstadt von Frankreich ist", "Η πρωτεύουσα", "The capital of Poland is"]
    requests = [Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 6}), i)
                for i, p in enumerate(prompts)]  # fmt: skip
    try:
        got = lm.generate_until(requests, disable_tqdm=True)
    finally:
        lm.close()
    for prompt, text in zip(prompts, got):
        ids = lm.tok_encode(prompt)
        with torch.inference_mode():
            for _ in range(6):
                nxt = int(lm.model(torch.tensor([ids])).logits[0, -1].argmax())
                if nxt in lm.tokenizer.stop_ids:
                    break
                ids.append(nxt)
        # bytes of a character the last token left incomplete are not text (the engine drops them, as vLLM does)
        expected = lm.tok_decode(ids[len(lm.tok_encode(prompt)) :]).removesuffix("\ufffd").split("\n\n")[0]
        assert text == expected
