"""Smoke tests of the speedrun benchmark's pieces, so the benchmark cannot rot between recorded runs: the GPT-2
baseline (counts, sizing, a real training step on NTREX text), the bpb measure and the time-to-reach interpolation,
and mfu_gpu.py's CPU path on a tiny config."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpt2_baseline import GPT, GPTConfig, configure_adamw, count_parameters, size_to_match  # noqa: E402
from speedrun_cpu import flores_bpb, summarize, time_to_reach  # noqa: E402


def test_analytic_count_matches_the_model_and_sizing_matches_our_active_parameters():
    from vernacular.model import ModelConfig, count_parameters as ours_count

    for cfg in (GPTConfig(vocab_size=300, block_size=16, n_layer=2, n_head=2, n_embd=32),
                GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=4, n_embd=64, bias=False)):
        assert count_parameters(cfg) == GPT(cfg).num_parameters()
    tiny = ModelConfig.load("tiny")
    active = ours_count(tiny).active
    cfg = size_to_match(active, tiny.vocab_size, 256, n_embd=tiny.hidden_size, n_head=tiny.num_attention_heads)
    one_layer = count_parameters(GPTConfig(n_layer=2)) - count_parameters(GPTConfig(n_layer=1))
    assert abs(count_parameters(cfg) - active) <= one_layer / 2  # the nearest depth
    assert cfg.n_embd == tiny.hidden_size and cfg.vocab_size == tiny.vocab_size


def test_baseline_learns_real_text_and_is_causal():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from vernacular.data.demo_corpus import demo_lines

    lines = demo_lines("deu")[:200]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    ids = torch.tensor([i for line in lines for i in tok.encode(line).ids])
    T = 32
    batch = ids[: (len(ids) // (T + 1)) * (T + 1)].view(-1, T + 1)[:8]

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=T, n_layer=2, n_head=2, n_embd=64)
    model = GPT(cfg, seed=0)
    # causal: changing the last input token changes no earlier logit
    x = batch[:2, :-1].clone()
    before = model(x)[0]
    x[:, -1] = (x[:, -1] + 1) % cfg.vocab_size
    after = model(x)[0]
    assert torch.allclose(before[:, :-1], after[:, :-1], atol=1e-5) and not torch.allclose(before[:, -1], after[:, -1])
    # tied head
    assert model.lm_head.weight is model.wte.weight

    opt = configure_adamw(model, lr=3e-3)
    losses = []
    for _ in range(25):
        _, loss = model(batch[:, :-1], targets=batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(cfg.vocab_size), rel=0.1)  # ~uniform at init
    assert losses[-1] < losses[0] - 1.0, losses

    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, T + 1, dtype=torch.long))


def test_flores_bpb_is_nll_in_bits_over_bytes():
    vocab, T = 16, 8
    windows = {"xxx": (torch.randint(0, vocab, (3, T + 1)), 2.0)}
    uniform = flores_bpb(lambda x: torch.zeros(*x.shape, vocab), windows, batch_size=2)
    assert uniform["xxx"] == pytest.approx(math.log2(vocab) / 2.0)  # 4 bits per token over 2 bytes per token


def test_time_to_reach_interpolates_and_summary_applies_the_goal():
    curve = [(0.0, 4.0), (10.0, 3.0), (20.0, 2.0)]
    assert time_to_reach(curve, 2.5) == pytest.approx(15.0)
    assert time_to_reach(curve, 4.5) == 0.0
    assert time_to_reach(curve, 1.0) is None

    def rec(points):
        return {"points": [{"step": i, "train_s": t, "bpb": b, "tokens": i} for i, (t, b) in enumerate(points)]}

    s = summarize(rec([(0, 4.0), (10, 3.0), (20, 2.0)]), rec([(0, 4.0), (10, 3.5), (20, 3.0)]))
    assert s["ours_time_to_baseline_final_s"] == pytest.approx(10.0) and s["time_ratio"] == pytest.approx(0.5)
    assert s["relative_bpb_reduction"] == pytest.approx(1 / 3) and s["goal_met"]
    s = summarize(rec([(0, 4.0), (10, 3.5), (20, 3.1)]), rec([(0, 4.0), (10, 3.5), (20, 3.0)]))
    assert s["ours_time_to_baseline_final_s"] is None and not s["goal_met"]


def test_mfu_gpu_cpu_path_runs_a_tiny_config(tmp_path):
    config = {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 16,
              "num_hidden_layers": 2, "num_attention_heads": 2, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
              "qk_rope_head_dim": 8, "v_head_dim": 8, "n_routed_experts": 4, "num_experts_per_tok": 2,
              "n_group": 2, "topk_group": 1, "max_position_embeddings": 64}
    path = tmp_path / "micro.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "mfu.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "mfu_gpu.py"), "--config", str(path),
                           "--device", "cpu", "--batch-size", "2", "--seq-len", "32", "--warmup", "1", "--steps", "2",
                           "--peak-tflops", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["steps"] == 2 and result["tokens_per_step"] == 64
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1
    assert result["mfu"] == pytest.approx(result["flops_per_token"] * result["tokens_per_s"] / 1e12)
    assert "MFU" in done.stdout


def test_mfu_gpu_without_a_gpu_says_so_and_exits_0():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU message does not apply")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "mfu_gpu.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "no CUDA GPU" in done.stdout
