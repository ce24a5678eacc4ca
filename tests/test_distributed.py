"""2-process torchrun (gloo, CPU) runs of `vernacular pretrain`: DDP and FSDP2 match one process with the same global
batch, and a 2-rank checkpoint resumes on 1 rank."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_support import cli_command, make_run, subprocess_env

STEPS = 4
ARGS = ["--steps", str(STEPS), "--seq-len", "32", "--eval-batches", "1", "--warmup", "2", "--no-progress"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("dist"))


def _run(template: Path, tmp_path: Path, name: str, nproc: int, *extra: str) -> Path:
    run = tmp_path / name
    if not run.exists():
        shutil.copytree(template, run)
    cmd = cli_command("pretrain", "--run-dir", str(run), "--config", str(run / "model.json"), *ARGS, *extra)
    if nproc > 1:  # torchrun runs `python -c ...` through --no-python
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--no-python", *cmd]
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return run


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics" / "train.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_with_the_same_global_batch(template, tmp_path, mode):
    single = _run(template, tmp_path, "single", 1, "--batch-size", "4")
    multi = _run(template, tmp_path, mode, 2, "--batch-size", "2", "--distributed", mode, "--save-every", "2")
    assert _losses(multi) == pytest.approx(_losses(single), rel=1e-4)
    assert len(_losses(multi)) == STEPS
    state = json.loads((multi / "checkpoints" / f"step_{STEPS:06d}" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["loader"]) == 2
    # the full (unsharded) checkpoint of 2 ranks continues on 1 rank
    resumed = _run(template, tmp_path, mode, 1, "--batch-size", "4", "--resume", "--steps", str(STEPS + 2))
    losses = _losses(resumed)
    assert len(losses) == STEPS + 2 and all(l == l for l in losses)  # finite, continued from step 4
