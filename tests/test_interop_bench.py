"""Smoke test of benchmarks/train_step.py: each side trains the same shapes and reports comparable figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is a dev dependency (pip install -e .[dev])")
ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("train_step_bench", ROOT / "benchmarks" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_sides_train_the_same_model_size_and_flops():
    bench = load_bench()
    threads = torch.get_num_threads()
    try:
        rows = [bench.worker(side, "16e", "fp32", batch=1, seq=16, steps=1, warmup=0, threads=1)
                for side in ("ours", "hf-grouped_mm")]
    finally:
        torch.set_num_threads(threads)
    ours, hf = rows
    assert ours["params"] == hf["params"]  # the same architecture on both sides
    assert ours["flops_per_token"] == hf["flops_per_token"] > 0
    assert all(r["tok_s"] > 0 and r["step_s"] > 0 for r in rows)
    assert bench.matmul_peak("fp32", threads=1, n=256, reps=2) > 0
