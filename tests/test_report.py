"""`vernacular report` on synthetic metrics: epochs, the validation curve next to the training loss, the overfitting
warning (validation bpb rising while training loss falls)."""

from __future__ import annotations

import json
from pathlib import Path

from vernacular.report import overfitting_warning, write_report


def _train(n: int, losses, epochs_per_step: float) -> list[dict]:
    return [{"step": s, "tokens": s * 1000, "epochs": s * epochs_per_step, "loss": losses(s) + 0.3,
             "main_loss": losses(s)} for s in range(1, n + 1)]


def _val(points: list[tuple[int, float, float]]) -> list[dict]:
    return [{"step": s, "tokens": s * 1000, "train_loss": tl, "val_bpb": {"deu": v + 0.1, "fra": v - 0.1},
             "val_bpb_mean": v} for s, tl, v in points]


def test_warning_fires_only_when_validation_rises_while_training_falls():
    falling = _val([(10, 5.0, 4.0), (20, 4.0, 3.5), (30, 3.0, 3.2)])
    assert overfitting_warning([], falling) is None
    overfit = _val([(10, 5.0, 4.0), (20, 3.0, 3.2), (30, 1.0, 3.6)])
    msg = overfitting_warning([], overfit)
    assert msg and "12.5%" in msg and "step 20" in msg and "overfitting" in msg
    # within the 2% tolerance of the minimum: still counts as falling
    assert overfitting_warning([], _val([(10, 5.0, 4.0), (20, 3.0, 3.2), (30, 2.0, 3.25)])) is None
    # validation rising because training diverged too (loss up): not overfitting, no such warning
    assert overfitting_warning([], _val([(10, 5.0, 4.0), (20, 3.0, 3.2), (30, 4.0, 3.6)])) is None
    # without train_loss in the val records, the step records' main loss is used
    bare = [{k: v for k, v in r.items() if k != "train_loss"} for r in overfit]
    assert overfitting_warning(_train(30, lambda s: 6.0 - s * 0.15, 0.1), bare)
    assert overfitting_warning(_train(30, lambda s: 6.0, 0.1), bare) is None
    assert overfitting_warning([], overfit[:1]) is None


def _run(tmp_path: Path, train: list[dict], val: list[dict]) -> Path:
    run = tmp_path / "run"
    (run / "metrics").mkdir(parents=True)
    (run / "metrics" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (run / "metrics" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    (run / "metrics" / "val.json").write_text(json.dumps({"val_bpb": val[-1]["val_bpb"]}))
    return run


def test_report_prints_epochs_and_warns_on_a_repeated_overfit_run(tmp_path, capsys):
    run = _run(tmp_path, _train(30, lambda s: 6.0 - s * 0.18, 0.4),
               _val([(10, 4.5, 4.0), (20, 2.7, 3.2), (30, 0.9, 3.6)]))
    text = write_report(run).read_text()
    assert "Data epochs: **12** passes" in text and "the run repeated its data" in text
    assert "> **Warning:** validation bpb rose 12.5%" in text
    assert "rising" in text and "minimum 3.2000" in text
    assert "![training](training.png)" in text
    assert (run / "report" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "data epochs: 12" in out and "warning: validation bpb rose" in out


def test_report_of_a_healthy_run(tmp_path):
    run = _run(tmp_path, _train(30, lambda s: 6.0 - s * 0.1, 0.01),
               _val([(10, 5.0, 4.0), (20, 4.0, 3.5), (30, 3.0, 3.45)]))
    text = write_report(run).read_text()
    assert "Data epochs: **0.3** passes over the training tokens: no training token was read twice." in text
    assert "still falling" in text and "Warning" not in text


def test_report_shows_language_confusion_by_the_benchmark_rules(tmp_path, capsys):
    run = _run(tmp_path, _train(30, lambda s: 6.0 - s * 0.1, 0.01),
               _val([(10, 5.0, 4.0), (20, 4.0, 3.5), (30, 3.0, 3.45)]))
    confusion = {"line_level_pass_rate": 0.8125, "answers": 10, "answers_scored": 7, "answers_skipped": 3,
                 "response_pass_rate": 0.6, "max_tokens": 32, "stop_rate": 0.5,
                 "per_language": {"deu": 0.75, "fra": 0.875}}
    (run / "metrics" / "sft_val.json").write_text(json.dumps({"step": 5, "tokens": 100, "val_loss": 2.0,
                                                               "language_confusion": confusion}))
    details = [{"lang": "deu", "detected": "nld", "pass": False}, {"lang": "deu", "detected": "deu", "pass": True},
               {"lang": "deu", "detected": "eng", "pass": False}, {"lang": "deu", "detected": "nld", "pass": False},
               {"lang": "fra", "detected": "ita", "pass": None}]  # skipped: too short to score
    (run / "metrics" / "language_confusion.json").write_text(json.dumps({**confusion, "details": details}))
    text = write_report(run).read_text()
    assert "**81.2%**" in text and "3 of them too short to score" in text and "all 10 counted: 60.0%" in text
    assert "| deu | 75% | nld ×2, eng ×1 |" in text and "| fra | 88% |  |" in text
    assert "50% of the answers ended" in text
    out = capsys.readouterr().out
    assert "line-level pass rate (LCB) 81.2% over 7 of 10 held-out questions" in out
