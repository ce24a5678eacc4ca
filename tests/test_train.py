"""End-to-end tests of `vernacular pretrain` on real NTREX text with a small model of the real architecture."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from test_train_support import cli_command, make_run, subprocess_env
from vernacular.train.checkpoint import list_checkpoints

COMMON = ["--batch-size", "4", "--seq-len", "32", "--eval-batches", "2", "--warmup", "3", "--no-progress"]


@pytest.fixture(scope="module")
def run_template(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("template"))


def _fresh(run_template: Path, tmp_path: Path, name: str) -> Path:
    import shutil

    dst = tmp_path / name
    shutil.copytree(run_template, dst)
    return dst


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics" / "train.jsonl").read_text().splitlines()]


def _losses(run: Path) -> list[tuple[int, float, float, float]]:
    return [(r["step"], r["loss"], r["main_loss"], r["grad_norm"]) for r in _records(run) if "loss" in r]


def test_pretrain_cli_writes_checkpoints_metrics_and_bpb(run_template, tmp_path):
    from vernacular.cli import main

    run = _fresh(run_template, tmp_path, "run")
    argv = ["pretrain", "--run-dir", str(run), "--config", str(run / "model.json"), "--steps", "6", "--save-every", "2",
            "--eval-every", "5", "--eval-points", "3", "--keep-last", "2", *COMMON]
    assert main(argv) == 0

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_000004", "step_000006"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000006"
    state = json.loads((run / "checkpoints" / "step_000006" / "state.json").read_text())
    assert state["step"] == 6 and state["tokens"] == 6 * 4 * 32
    assert state["model_config"]["hidden_size"] == 64 and state["model_config"]["vocab_size"] == 512
    assert set(state["files"]) == {"model.safetensors", "optimizer.safetensors"}
    assert {"torch_cpu", "python", "numpy"} <= set(state["rng"]) and len(state["loader"]) == 1

    records = _records(run)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for r in steps:
        assert {"tokens", "main_loss", "mtp_loss", "balance_loss", "lr", "grad_norm", "tok_per_s", "mfu",
                "expert_load_max_mean"} <= set(r)
        assert r["loss"] == pytest.approx(r["main_loss"] + r["mtp_weight"] * r["mtp_loss"] + 1e-4 * r["balance_loss"])
        assert set(r["expert_load_max_mean"]) == {"model.layers.1", "mtp.0.block"}
    assert steps[0]["lr"] == pytest.approx(3e-3 / 3)  # warmup: step 1 of 3
    assert not [r for r in records if "val_bpb" in r]  # validation has its own file
    # passes over the training windows: 4 windows per step, a fraction of one epoch here
    assert [r["epochs"] for r in steps] == pytest.approx([r["step"] * steps[0]["epochs"] for r in steps])
    assert 0 < steps[-1]["epochs"] < 1
    # validation at every 1/3 of the run (steps 2, 4), every 5 steps, and at the end: per-language records
    evals = [json.loads(line) for line in (run / "metrics" / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals] == [2, 4, 5, 6]
    for r in evals:
        assert set(r["val_bpb"]) == {"deu", "fra", "pol"}
        assert r["val_bpb_mean"] == pytest.approx(sum(r["val_bpb"].values()) / 3)
        assert r["tokens"] == r["step"] * 4 * 32 and 0 < r["epochs"] < 1
    assert evals[0]["train_loss"] == pytest.approx((steps[0]["main_loss"] + steps[1]["main_loss"]) / 2)
    val = json.loads((run / "metrics" / "val.json").read_text())
    assert val["val_bpb"] == evals[-1]["val_bpb"]
    assert set(val["val_bpb"]) == {"deu", "fra", "pol"}
    # an untrained 512-token model predicts ~uniformly: 9 bits per token over ~2-3 bytes per token
    assert all(1.0 < b < 6.0 for b in val["val_bpb"].values()), val
    pretrain = tomllib.loads((run / "run.toml").read_text())["pretrain"]
    assert pretrain["steps"] == 6 and pretrain["model_config"]["n_routed_experts"] == 4


def test_gradient_accumulation_equals_the_larger_batch(run_template, tmp_path):
    from vernacular.train import TrainConfig, train

    results = []
    for name, batch, accum in (("big", 4, 1), ("accum", 2, 2)):
        run = _fresh(run_template, tmp_path, name)
        cfg = TrainConfig(model=str(run / "model.json"), steps=2, batch_size=batch, grad_accum=accum, seq_len=32,
                          eval_batches=1, progress=False)
        train(run, cfg)
        results.append(_losses(run))
    for (s1, l1, m1, g1), (s2, l2, m2, g2) in zip(*results):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-5) and g1 == pytest.approx(g2, rel=1e-4)


def test_minutes_budget_stops_then_evaluates_and_saves(run_template, tmp_path):
    from vernacular.train import TrainConfig, train

    run = _fresh(run_template, tmp_path, "timed")
    started = time.perf_counter()
    result = train(run, TrainConfig(model=str(run / "model.json"), minutes=0.03, batch_size=2, seq_len=32,
                                    eval_batches=1, progress=False))
    assert result["step"] >= 1 and math.isfinite(result["val_bpb_mean"])
    assert Path(result["checkpoint"]).name == f"step_{result['step']:06d}"
    assert time.perf_counter() - started < 120  # generous: only guards against ignoring the budget entirely


def test_kill9_then_resume_is_bit_identical_and_skips_a_corrupt_checkpoint(run_template, tmp_path):
    args = ["--config", "MODEL", "--steps", "12", "--save-every", "2", *COMMON]

    def command(run: Path, *extra: str) -> list[str]:
        return cli_command("pretrain", "--run-dir", str(run),
                           *[str(run / "model.json") if a == "MODEL" else a for a in args], *extra)

    ref = _fresh(run_template, tmp_path, "reference")
    subprocess.run(command(ref), check=True, env=subprocess_env(), capture_output=True, timeout=600)

    run = _fresh(run_template, tmp_path, "killed")
    proc = subprocess.Popen(command(run), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics" / "train.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and sum(1 for _ in metrics.open()) >= 7:  # step 7 logged: checkpoints 2, 4, 6 exist
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(r["step"] for r in _records(run) if "loss" in r)
    assert killed_at < 12

    # damage the newest checkpoint: resume must say so and fall back to the one before
    # complete checkpoints only: the kill may have left a half-written `step_N.tmp-PID` folder, which resume removes
    *_, previous, newest = list_checkpoints(run / "checkpoints")
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    done = subprocess.run(command(run, "--resume"), env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"skipping checkpoint {newest.name}" in done.stderr and "model.safetensors" in done.stderr
    assert f"resumed from {previous}" in done.stderr

    assert _losses(run) == _losses(ref)  # exact float equality, every step, after the kill and the fallback
    assert [r["step"] for r in _records(run) if "loss" in r] == list(range(1, 13))
