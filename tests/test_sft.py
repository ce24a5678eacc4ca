"""`vernacular sft`: assistant-only targets against transformers, packing without cross-conversation attention, bad
records quarantined, held-out loss going down, bit-identical resume, and a chat model served that stops on <|end|>.

Runs on the CC0 fixture conversations in tests/fixtures/sft (no ../shared): a short run of the real stages
(data -> tokenizer -> pretrain -> sft) with a ~0.3 M parameter model of the real architecture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures" / "sft"
TINY = {"hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16,
        "v_head_dim": 16, "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2,
        "topk_group": 1, "first_k_dense_replace": 1, "max_position_embeddings": 256, "num_nextn_predict_layers": 1,
        "vocab_size": 512}
SFT_ARGS = ["--seq-len", "256", "--batch-size", "4", "--lr", "3e-3", "--warmup", "2", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _texts(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        for m in json.loads(line)["messages"]:
            c = m["content"]
            out.append(c if isinstance(c, str) else "".join(p["text"] for p in c))
    return out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """data -> tokenizer -> a few pretraining steps, on the fixture conversations' text."""
    from vernacular.cli import main

    torch.set_num_threads(1)  # module fixtures run before the one_thread fixture; tiny shapes run fastest on one
    root = tmp_path_factory.mktemp("sft")
    source = root / "source"
    source.mkdir()
    for f in FIXTURES.glob("*.jsonl"):
        (source / f"{f.stem}.txt").write_text("\n".join(_texts(f)) + "\n", encoding="utf-8")
    run = root / "run"
    (root / "model.json").write_text(json.dumps(TINY))
    assert main(["data", "--run-dir", str(run), "--source", str(source), "--workers", "1", "--tasks", "1"]) == 0
    assert main(["tokenizer", "--run-dir", str(run), "--vocab-size", "512"]) == 0
    assert main(["pretrain", "--run-dir", str(run), "--config", str(root / "model.json"), "--steps", "4",
                 "--batch-size", "4", "--seq-len", "64", "--eval-batches", "1", "--no-progress"]) == 0
    return run


def _copy(run: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def test_assistant_targets_equal_transformers_mask_token_by_token(pretrained):
    """Our targets are exactly the tokens transformers' `apply_chat_template(return_assistant_tokens_mask=True)`
    marks on the exported tokenizer: each assistant content and its <|end|>, nothing of the prompt."""
    from transformers import AutoTokenizer

    from vernacular.interop.hf import export_hf, load_checkpoint
    from vernacular.sft.data import IGNORE_INDEX, conversation_tensors, load_conversations
    from vernacular.tokenizer import ASSISTANT_ID, END_ID, USER_ID, load

    out = pretrained.parent / "export"
    export_hf(load_checkpoint(pretrained / "checkpoints" / "step_000004"), out, tokenizer_dir=pretrained / "tokenizer")
    hf = AutoTokenizer.from_pretrained(str(out))
    from vernacular.sft.data import DEMO_DIR

    files = sorted(FIXTURES.glob("*.jsonl")) + [DEMO_DIR / "tools.jsonl"]  # + tool calls and tool results
    ds = load_conversations(files, load(pretrained / "tokenizer"), max_tokens=4000)
    assert sum(ds.rejected.values()) == 0 and sum(c.tools is not None for c in ds.train + ds.val) >= 10
    for c in ds.train + ds.val:
        theirs = hf.apply_chat_template(c.messages, tools=c.tools, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
        ids, mask = list(theirs["input_ids"]), list(theirs["assistant_masks"])
        assert c.ids == ids
        inputs, labels, positions = conversation_tensors(c)
        assert inputs == ids[:-1] and positions == list(range(len(ids) - 1))
        assert labels == [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]
        supervised = [t for t in labels if t != IGNORE_INDEX]
        turns = sum(m["role"] == "assistant" for m in c.messages)
        assert supervised.count(END_ID) == turns and supervised[-1] == END_ID
        assert ASSISTANT_ID not in supervised and USER_ID not in supervised


def test_packed_conversations_do_not_attend_to_each_other():
    """Logits of each conversation inside a packed row equal those of the conversation run alone."""
    from vernacular.model import build_model
    from vernacular.sft.data import Conversation, pack

    model = build_model({**TINY, "initializer_range": 0.2}, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    convs = [Conversation([], f"c{i}", None, torch.randint(7, 512, (n,), generator=gen).tolist(), [1] * n)
             for i, n in enumerate((9, 23, 5, 30, 12))]
    rows = pack(convs, seq_len=48)
    assert len(rows) == 2  # 8 + 22 + 4 = 34 (+14 padding) | 29 + 11 = 40 (+8 padding)
    ids = torch.tensor([r[0] for r in rows])
    positions = torch.tensor([r[2] for r in rows])
    with torch.no_grad():
        packed = model(ids, position_ids=positions).logits
        mixed = model(ids).logits  # without the boundaries, later conversations do see earlier ones
        at = {0: 0, 1: 0}
        for row, group in ((0, convs[:3]), (1, convs[3:])):
            for c in group:
                n = len(c.ids) - 1
                alone = model(torch.tensor([c.ids[:-1]])).logits[0]
                torch.testing.assert_close(packed[row, at[row]: at[row] + n], alone, atol=2e-5, rtol=1e-5)
                at[row] += n
        assert not torch.allclose(mixed[0, 8:30], packed[0, 8:30], atol=1e-3)


def test_bad_records_are_counted_by_reason_and_quarantined(pretrained, tmp_path):
    from vernacular.sft.data import load_conversations
    from vernacular.tokenizer import load

    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    lines = [
        json.dumps(good),
        '{"messages": [{"role": "user", "content": "unterminated',  # invalid_json
        json.dumps({"text": "not a chat"}),  # not_a_conversation
        json.dumps({"messages": [{"role": "robot", "content": "x"}, good["messages"][1]]}),  # unknown_role
        json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                                 good["messages"][1]]}),  # invalid_content
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}),
        json.dumps({"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]}),
        json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "la " * 200}]}),  # too_long
        "",
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    ds = load_conversations([path], load(pretrained / "tokenizer"), max_tokens=129, rejects_path=rejects,
                            val_fraction=0.0)
    assert len(ds.train) == 1 and ds.records == 8
    assert dict(ds.rejected) == {"invalid_json": 1, "not_a_conversation": 1, "unknown_role": 1, "invalid_content": 1,
                                 "empty_content": 1, "no_assistant_turn": 1, "too_long": 1}
    quarantined = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert [q["source"] for q in quarantined] == [f"{path}:{i}" for i in range(2, 9)]
    assert [q["record"] for q in quarantined] == lines[1:8]  # the record as it was, for a later fix and retry
    assert all(q["detail"] for q in quarantined)


def test_embedded_demo_conversations_load_cleanly_and_hold_out_every_language(pretrained):
    """The default data: every record of the 24 demo files is a valid conversation, and the deterministic split
    holds out questions in all 24 languages (what the language-confusion measurement asks)."""
    from collections import Counter

    from vernacular.data.languages import EU_LANGUAGES
    from vernacular.sft.data import default_sources, load_conversations
    from vernacular.tokenizer import load

    tok = load(pretrained / "tokenizer")
    assert sorted(p.stem for p in default_sources()) == sorted([*EU_LANGUAGES, "tools"])
    ds = load_conversations(default_sources(), tok, max_tokens=100_000)
    assert sum(ds.rejected.values()) == 0, ds.rejected
    per_lang = Counter(c.lang for c in ds.train + ds.val)
    assert set(per_lang) == set(EU_LANGUAGES) and min(per_lang.values()) >= 40, per_lang
    held_out = Counter(c.lang for c in ds.val)
    assert set(held_out) == set(EU_LANGUAGES) and all(held_out[lang] >= 4 for lang in EU_LANGUAGES), held_out
    again = load_conversations(list(reversed(default_sources())), tok, max_tokens=100_000)
    assert sorted(c.key for c in again.val) == sorted(c.key for c in ds.val)


def test_sft_cli_lowers_held_out_loss_then_serves_a_chat_that_stops(pretrained, tmp_path):
    """The CI short run: SFT on the fixture conversations (plus a file of bad records) from the pretraining
    checkpoint; the held-out assistant loss falls; serve and export take the SFT checkpoint; a chat request through
    the official OpenAI client ends on <|end|> with finish_reason "stop"."""
    import tomllib

    from openai import OpenAI
    from serve_helpers import LiveServer

    from vernacular.cli import main
    from vernacular.interop.hf import latest_checkpoint as export_checkpoint
    from vernacular.serve.api import create_app
    from vernacular.serve.engine import Engine
    from vernacular.serve.loading import find_tokenizer_dir, load_model_for_serving, resolve_checkpoint
    from vernacular.serve.text import ServingTokenizer

    run = _copy(pretrained, tmp_path, "run")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [\n' + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    pretrain_files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert main(["sft", "--run-dir", str(run), "--data", str(FIXTURES), "--data", str(bad), "--steps", "60",
                 "--save-every", "30", "--confusion-tokens", "16", *SFT_ARGS]) == 0

    result = json.loads((run / "metrics" / "sft_val.json").read_text())
    assert result["step"] == 60 and result["val_loss"] < result["val_loss_start"] - 0.5, result
    confusion = result["language_confusion"]
    assert confusion["answers"] == 6 and set(confusion["per_language"]) <= {"deu", "eng", "fra"}
    details = json.loads((run / "metrics" / "language_confusion.json").read_text())["details"]
    scored = sum(d["pass"] is not None for d in details)
    assert confusion["answers_scored"] == scored == 6 - confusion["answers_skipped"]
    if confusion["answers_scored"]:
        assert 0.0 <= confusion["line_level_pass_rate"] <= 1.0
    assert confusion["response_pass_rate"] == sum(d["response_pass"] for d in details) / 6
    assert confusion["stop_rate"] == sum(d["finish_reason"] == "stop" for d in details) / 6
    records = [json.loads(line) for line in (run / "metrics" / "sft.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 60]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 61))
    data = json.loads((run / "sft" / "data.json").read_text())
    assert data["train"] == 30 and data["val"] == 6 and data["rejected"]["invalid_json"] == 1
    assert data["rejected"]["no_assistant_turn"] == 1
    assert len((run / "sft" / "rejects.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(pretrain_files + ["sft"])
    assert sorted(p.name for p in (run / "checkpoints" / "sft").iterdir()) == ["latest", "step_000030", "step_000060"]
    sft = tomllib.loads((run / "run.toml").read_text())["sft"]
    assert sft["init_from"].endswith("step_000004") and sft["steps"] == 60

    sft_ckpt = run / "checkpoints" / "sft" / "step_000060"
    assert resolve_checkpoint(run) == sft_ckpt and export_checkpoint(run) == sft_ckpt

    model, ckpt = load_model_for_serving(run)
    engine = Engine(model, ServingTokenizer(find_tokenizer_dir(ckpt, run)), max_batch=2)
    with LiveServer(create_app(engine, model_name="sft-test")) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
        reply = client.chat.completions.create(
            model="sft-test", messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=64, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and reply.usage.completion_tokens < 64, reply
    assert choice.message.role == "assistant" and "<|end|>" not in choice.message.content


def test_sft_resume_after_a_crash_is_bit_identical(pretrained, tmp_path, monkeypatch):
    """A run that dies mid-step and resumes from its last SFT checkpoint logs the same losses, bit for bit, as one
    that never stopped (pretraining's kill -9 test covers the atomic writes of the same loop)."""
    from vernacular.sft.data import PackedLoader
    from vernacular.sft.trainer import finetune
    from vernacular.train import TrainConfig

    def config(**kw):
        return TrainConfig(steps=8, batch_size=2, seq_len=256, save_every=2, progress=False, optim={"lr": 3e-3},
                           schedule={"warmup": 2}, **kw)

    def losses(run: Path) -> list:
        return [(r["step"], r.get("loss"), r.get("grad_norm"), r.get("val_loss"))
                for r in map(json.loads, (run / "metrics" / "sft.jsonl").read_text().splitlines())]

    ref = _copy(pretrained, tmp_path, "ref")
    finetune(ref, config(), data=[FIXTURES], confusion_tokens=0)

    crashed = _copy(pretrained, tmp_path, "crashed")
    real_next = PackedLoader.next_batch
    calls = {"n": 0}

    def dying_next(self):
        calls["n"] += 1
        if calls["n"] == 6:  # inside step 6: checkpoints 2 and 4 exist
            raise RuntimeError("simulated crash")
        return real_next(self)

    monkeypatch.setattr(PackedLoader, "next_batch", dying_next)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(crashed, config(), data=[FIXTURES], confusion_tokens=0)
    monkeypatch.setattr(PackedLoader, "next_batch", real_next)
    assert max(r[0] for r in losses(crashed)) == 5
    finetune(crashed, config(resume=True), data=[FIXTURES], confusion_tokens=0)
    assert losses(crashed) == losses(ref)
    assert [r[0] for r in losses(ref)] == [0, *range(1, 9), 8]


def test_init_from_a_transformers_folder_starts_from_the_same_weights(pretrained, tmp_path):
    """`--init-from` an exported transformers folder into an empty run: the tokenizer comes along, and the held-out
    loss before the first step equals that of starting from the pretraining checkpoint the folder was exported from."""
    from vernacular.cli import main
    from vernacular.sft.trainer import finetune
    from vernacular.train import TrainConfig

    hf = tmp_path / "hf"
    assert main(["export", "hf", "--run-dir", str(pretrained), "--out", str(hf)]) == 0
    starts = []
    for name, init in (("from-pretrain", None), ("from-hf", hf)):
        run = _copy(pretrained, tmp_path, name) if init is None else tmp_path / name
        result = finetune(run, TrainConfig(steps=1, batch_size=2, seq_len=256, progress=False), data=[FIXTURES],
                          init_from=init, confusion_tokens=0)
        starts.append(result["val_loss_start"])
        assert Path(result["checkpoint"]) == run / "checkpoints" / "sft" / "step_000001"
    assert (tmp_path / "from-hf" / "tokenizer" / "tokenizer.json").exists()
    assert starts[1] == pytest.approx(starts[0], rel=1e-5)


def test_wise_ft_serves_the_interpolated_weights_and_resumes_from_the_fine_tuned_ones(pretrained, tmp_path):
    """`--wise-ft 0.5`: the checkpoint serving and export take holds (start + fine-tuned) / 2 for every weight, with
    checksums; the fine-tuned step_* checkpoint stays and is the one a resume continues from."""
    from safetensors.torch import load_file

    from vernacular.cli import main
    from vernacular.train.checkpoint import MODEL_FILE, find_resumable, latest_model_checkpoint, verify_checkpoint

    run = _copy(pretrained, tmp_path, "wise")
    start = load_file(latest_model_checkpoint(run) / MODEL_FILE)
    assert main(["sft", "--run-dir", str(run), "--data", str(FIXTURES), "--steps", "2", "--batch-size", "2",
                 "--seq-len", "256", "--lr", "3e-3", "--confusion-tokens", "0", "--wise-ft", "0.5"]) == 0
    served = latest_model_checkpoint(run)
    assert served == run / "checkpoints" / "sft" / "wise_ft-step_000002"
    verify_checkpoint(served)
    tuned = load_file(run / "checkpoints" / "sft" / "step_000002" / MODEL_FILE)
    merged = load_file(served / MODEL_FILE)
    moved = 0
    for name, w in merged.items():
        torch.testing.assert_close(w, (start[name] + tuned[name]) / 2, rtol=0, atol=1e-6)
        moved += not torch.equal(start[name], tuned[name])
    assert moved > 10
    assert find_resumable(run / "checkpoints" / "sft").name == "step_000002"
    result = json.loads((run / "metrics" / "sft_val.json").read_text())
    assert result["wise_ft"] == 0.5 and result["checkpoint"] == str(served)
    from vernacular.compliance.model_card import model_card
    from vernacular.compliance.records import collect

    assert "WiSE-FT 0.5: 0.5 x the starting model" in model_card(collect(run))  # the card says what the weights are
    assert main(["sft", "--run-dir", str(run), "--wise-ft", "0", "--steps", "1"]) == 2


def _write_text(run: Path, lang: str, docs: list[list[str]]) -> None:
    import gzip

    folder = run / "data" / "text" / "train" / lang
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "00000.jsonl.gz", "wt", encoding="utf-8") as f:
        for n, lines in enumerate(docs):
            f.write(json.dumps({"text": "\n".join(lines), "id": f"{lang}/{n}"}, ensure_ascii=False) + "\n")


def test_replay_pairs_are_consecutive_lines_of_one_document_and_train_only(pretrained, tmp_path):
    """`--replay N`: N continuation conversations per language from data/text/train (user: a line, assistant: the
    next line of the same document), the same draw for the same seed, over-long pairs skipped; fine-tuning trains on
    them without holding any out, and a run without cleaned text gets a clear error."""
    from vernacular.cli import main
    from vernacular.sft.data import replay_conversations
    from vernacular.tokenizer import load
    from vernacular.tokenizer.chat import encode_chat

    tok = load(pretrained / "tokenizer")
    run = _copy(pretrained, tmp_path, "replay")
    shutil.rmtree(run / "data" / "text" / "train")
    deu = [[f"Satz {d}.{i} über das Wetter in Berlin." for i in range(5)] for d in range(4)]
    fra = [[f"Phrase {d}.{i} sur la météo à Paris." for i in range(5)] for d in range(4)]
    fra[0][1] = "très long " * 300  # a pair with this line exceeds the context below
    _write_text(run, "deu", deu)
    _write_text(run, "fra", fra)
    text_dir = run / "data" / "text" / "train"

    convs = replay_conversations(run, tok, per_language=6, max_tokens=257, seed=0)
    assert [c.lang for c in convs].count("deu") == 6 and [c.lang for c in convs].count("fra") == 6
    consecutive = {(a, b) for doc in deu + fra for a, b in zip(doc, doc[1:])}
    for c in convs:
        user, assistant = (m["content"] for m in c.messages)
        assert [m["role"] for m in c.messages] == ["user", "assistant"] and (user, assistant) in consecutive
        assert "très long" not in user + assistant and len(c.ids) <= 257
        assert c.ids == encode_chat(tok, c.messages, add_generation_prompt=False).ids
    again = replay_conversations(run, tok, per_language=6, max_tokens=257, seed=0)
    assert [c.messages for c in again] == [c.messages for c in convs]
    other = replay_conversations(run, tok, per_language=6, max_tokens=257, seed=1)
    assert [c.messages for c in other] != [c.messages for c in convs]

    assert main(["sft", "--run-dir", str(run), "--data", str(FIXTURES), "--replay", "5", "--steps", "1",
                 "--confusion-tokens", "0", *SFT_ARGS]) == 0
    data = json.loads((run / "sft" / "data.json").read_text())
    assert data["replay"] == 10 and data["train"] == 30 + 10 and data["val"] == 6 and data["accepted"] == 36

    shutil.rmtree(text_dir)
    assert main(["sft", "--run-dir", str(run), "--data", str(FIXTURES), "--replay", "5", "--steps", "1",
                 "--confusion-tokens", "0", *SFT_ARGS]) == 1


def test_line_level_pass_follows_the_language_confusion_benchmark_rules():
    """LCB's LPR rules on real news lines: lines of fewer than 5 words are not scored (an answer with none is
    skipped), every scored line must be identified as the question's language, and one wrong line fails the answer;
    the whole-answer `response_pass` has no skipping (a short answer is judged as it is, an empty one fails)."""
    from vernacular.sft.confusion import lcb_lines, line_level_pass, response_pass

    news = Path(__file__).parent / "data" / "ntrex-sample"  # NTREX-128 news, CC BY-SA 4.0
    deu, eng, fra = ((news / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:3]
                     for lang in ("deu", "eng", "fra"))
    assert line_level_pass(deu[0], "deu") is True and line_level_pass(fra[1], "fra") is True
    assert line_level_pass(deu[0], "fra") is False
    assert line_level_pass("\n".join([deu[0], deu[1], eng[2]]), "deu") is False  # one English line fails the answer
    assert line_level_pass("Ja.\n" + deu[1], "deu") is True  # the short line is not scored
    assert line_level_pass("Ja, gut.", "deu") is None and line_level_pass("", "deu") is None  # skipped
    assert lcb_lines("a, b; c. d! e?") == ["a b c d e"] and lcb_lines("a b c d") == []
    assert response_pass(deu[0], "deu") and not response_pass("", "deu") and not response_pass(eng[0], "deu")


def test_dpo_loss_is_the_papers_sigmoid_loss():
    """DPO (Rafailov et al., 2023, eq. 7): -log sigmoid(beta * ((pc - rc) - (pr - rr))), averaged over pairs."""
    from vernacular.sft.preference import dpo_loss

    pc, pr = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -2.0])  # margins: (1 - -1) = 2 and (1 - 1) = 0
    rc, rr = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -3.0])
    expected = -(torch.nn.functional.logsigmoid(torch.tensor(0.1 * 2.0))
                 + torch.nn.functional.logsigmoid(torch.tensor(0.1 * 0.0))) / 2
    torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, beta=0.1), expected)
    assert float(dpo_loss(rc, rr, rc, rr, beta=0.5)) == pytest.approx(0.6931472)  # policy == reference: log 2


class _Answer:
    def __init__(self, text: str):
        self.text, self.finish_reason = text, "length"


ENGLISH = "The weather is very nice today and we are going for a long walk in the park"


def _english_answers(monkeypatch) -> list[int]:
    """The model 'answers' every question in English (the serving engine's greedy pass replaced); returns the number
    of prompts it was asked."""
    from vernacular.sft import confusion

    asked = []

    def fake(model, tokenizer, prompts, max_tokens=32, max_batch=16):
        asked.append(len(prompts))
        return [_Answer(ENGLISH) for _ in prompts]

    monkeypatch.setattr(confusion, "greedy_answers", fake)
    return asked


def test_language_preference_pairs_reject_the_models_wrong_language_answers(pretrained, monkeypatch):
    """A pair for every training question answered in another language (LCB's line rule): chosen the conversation's
    own first answer, rejected the model's; the labels are each answer's tokens and its end-of-turn token."""
    from vernacular.sft.data import expand_sources, load_conversations
    from vernacular.sft.preference import _batch, language_preference_pairs
    from vernacular.tokenizer import load

    _english_answers(monkeypatch)
    tok = load(pretrained / "tokenizer")
    ds = load_conversations(expand_sources([FIXTURES]), tok, max_tokens=257, val_fraction=0.0)
    pairs, wrong = language_preference_pairs(torch.nn.Linear(1, 1), pretrained / "tokenizer", ds.train)
    non_english = [c for c in ds.train if c.lang != "eng"]
    assert set(wrong) == {"deu", "fra"} and sum(wrong.values()) == len(pairs) == len(non_english)
    for (chosen, rejected), c in zip(pairs, non_english):
        first = next(m for m in c.messages if m["role"] == "assistant")
        text = first["content"] if isinstance(first["content"], str) else first["content"][0]["text"]
        for enc, answer in ((chosen, text), (rejected, ENGLISH)):
            ids, labels = _batch([enc])
            target = labels[0][labels[0] != -100].tolist()
            assert tok.decode(target[:-1]) == answer and tok.id_to_token(target[-1]) == "<|end|>"
        assert chosen.ids[: chosen.assistant_mask.index(1)] == rejected.ids[: rejected.assistant_mask.index(1)]


def test_sft_language_dpo_serves_its_checkpoint_and_is_deterministic(pretrained, tmp_path, monkeypatch):
    """`vernacular sft --language-dpo 4`: the DPO steps start at loss log 2 (the policy is its reference), push the
    chosen answers above the rejected ones, write a verified `dpo-*` checkpoint that serving, export and the model
    card take, and the same command gives the same weights."""
    from safetensors.torch import load_file

    from vernacular.cli import main
    from vernacular.compliance.model_card import model_card
    from vernacular.compliance.records import collect
    from vernacular.train.checkpoint import MODEL_FILE, find_resumable, latest_model_checkpoint, verify_checkpoint

    weights = []
    for name in ("dpo_a", "dpo_b"):
        asked = _english_answers(monkeypatch)
        run = _copy(pretrained, tmp_path, name)
        assert main(["sft", "--run-dir", str(run), "--data", str(FIXTURES), "--steps", "2", "--confusion-tokens", "0",
                     "--wise-ft", "0.5", "--language-dpo", "4", "--dpo-lr", "1e-3", *SFT_ARGS]) == 0
        served = latest_model_checkpoint(run)
        assert served == run / "checkpoints" / "sft" / "dpo-wise_ft-step_000002"
        verify_checkpoint(served)
        assert find_resumable(run / "checkpoints" / "sft").name == "step_000002"
        assert asked == [30]  # every training conversation's opening question, once
        steps = [json.loads(line) for line in (run / "metrics" / "sft_dpo.jsonl").read_text().splitlines()]
        assert [s["step"] for s in steps] == [1, 2, 3, 4]
        assert steps[0]["dpo_loss"] == pytest.approx(0.6931472, abs=1e-5)
        assert steps[-1]["dpo_loss"] < 0.69 and steps[-1]["reward_margin"] > 0
        result = json.loads((run / "metrics" / "sft_val.json").read_text())
        assert result["checkpoint"] == str(served) and result["language_dpo"]["pairs"] == 20
        assert "val_loss_before_dpo" in result
        assert "4 steps of DPO (beta 0.1) with 20 of the model's own wrong-language answers" in model_card(collect(run))
        assert main(["report", "--run-dir", str(run)]) == 0
        assert "Language DPO (`--language-dpo`): 4 steps on 20 of" in (run / "report" / "report.md").read_text()
        weights.append(load_file(served / MODEL_FILE))
    start = load_file(run / "checkpoints" / "sft" / "wise_ft-step_000002" / MODEL_FILE)
    assert any(not torch.equal(start[k], weights[0][k]) for k in start)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
