"""Training-step throughput: Vernacular's model vs transformers' DeepseekV3ForCausalLM, same shapes, same batch, CPU.

    python benchmarks/train_step.py                      # 16e top-4 and 64e top-6, fp32 and bf16 autocast, 8x256
    python benchmarks/train_step.py --configs 16e --dtypes fp32 --steps 3 --warmup 1   # quick look

Each side (ours, transformers "eager", transformers "grouped_mm") runs in its own subprocess so its peak RSS is its own
(`resource.getrusage` max RSS minus the RSS after imports; tracemalloc does not see torch's allocator). A step is
forward + backward + AdamW (+ our aux-loss-free bias update), warm-up steps first, then the median of timed steps.
Achieved FLOP/s use `vernacular.model.info.flops_per_token` (6N + attention) for both sides (they compute the same
function), reported as a fraction of the machine's matmul peak measured in this same run (a large matmul per dtype).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# Scaled-down DeepSeek-V3 shapes (hidden 256, 4 layers, vocab 8192, 1 dense layer, 1 shared expert). MTP and the
# sequence-wise balance loss are off: transformers trains neither, and the comparison is of the same computation.
BASE = dict(
    vocab_size=8192,
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=4,
    q_lora_rank=None,
    kv_lora_rank=128,
    qk_nope_head_dim=64,
    qk_rope_head_dim=32,
    v_head_dim=64,
    n_shared_experts=1,
    first_k_dense_replace=1,
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    max_position_embeddings=1024,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    num_nextn_predict_layers=0,
    seq_aux_loss_weight=0.0,
)
CONFIGS = {
    "16e": dict(BASE, n_routed_experts=16, num_experts_per_tok=4, moe_intermediate_size=256, n_group=4, topk_group=2),
    "64e": dict(BASE, n_routed_experts=64, num_experts_per_tok=6, moe_intermediate_size=128, n_group=8, topk_group=4,
                q_lora_rank=256, num_attention_heads=8),
}
SIDES = ("ours", "hf-eager", "hf-grouped_mm")


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(side: str, config_name: str, dtype: str, batch: int, seq: int, steps: int, warmup: int, threads: int) -> dict:
    """One side, one config, one dtype: build, train `warmup + steps` steps, report median step time and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from vernacular.model import ModelConfig, build_model
    from vernacular.model.info import flops_per_token

    config = ModelConfig.from_dict(CONFIGS[config_name])
    if side != "ours":
        import transformers  # noqa: F401  (import cost outside the RSS delta)
    rss0 = _current_rss_mb()
    if side == "ours":
        model = build_model(config, seed=0)
    else:
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

        from vernacular.interop.hf import config_to_hf

        hf = config_to_hf(config)
        for k in ("architectures", "model_type", "dtype", "torch_dtype", "scoring_func", "topk_method"):
            hf.pop(k, None)
        hf_config = DeepseekV3Config(**hf)
        hf_config._attn_implementation = "sdpa"
        hf_config._experts_implementation = side.removeprefix("hf-")
        model = DeepseekV3ForCausalLM(hf_config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=False, foreach=True)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, config.vocab_size, (batch, seq + 1), generator=g)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast:
            if side == "ours":
                loss = model(data[:, :-1], labels=data[:, 1:]).loss
            else:
                loss = model(input_ids=data[:, :-1], labels=data[:, :-1]).loss  # transformers shifts internally
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if side == "ours":
            model.update_expert_bias()
        return time.perf_counter() - t0, time.process_time() - c0

    for _ in range(warmup):
        step()
    times = [step() for _ in range(steps)]
    med = statistics.median(t for t, _ in times)
    cpu = statistics.median(c for _, c in times)
    tokens = batch * seq
    return {
        "side": side,
        "config": config_name,
        "dtype": dtype,
        "step_s": med,
        "tok_s": tokens / med,
        # CPU seconds of this process (all its threads): steady on a shared machine, where wall time is not
        "tok_per_cpu_s": tokens / cpu,
        "flops_per_token": flops_per_token(config, seq),
        "peak_rss_mb": _rss_mb() - rss0,
        "params": sum(p.numel() for p in model.parameters()),
    }


def matmul_peak(dtype: str, threads: int, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of a large square matmul: the roofline the step is measured against."""
    import torch

    torch.set_num_threads(threads)
    dt = torch.float32 if dtype == "fp32" else torch.bfloat16
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_side(args, side: str, config: str, dtype: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--configs", config, "--dtypes", dtype,
           "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"side": side, "config": config, "dtype": dtype, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="16e,64e")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="repeat every side this often, interleaved; report the median")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        r = worker(args.worker, args.configs, args.dtypes, args.batch, args.seq, args.steps, args.warmup, args.threads)
        print(json.dumps(r))
        return 0

    from tqdm import tqdm

    configs, dtypes, sides = args.configs.split(","), args.dtypes.split(","), args.sides.split(",")
    # Measured before and after the sides (best of both): on a shared machine a single burst can land in a busy spell.
    peaks = {d: matmul_peak(d, args.threads) for d in dtypes}
    runs = []
    # Rounds interleave the sides (A B C A B C ...) so a busy spell on a shared machine hits every side alike.
    jobs = [(c, d, s) for c in configs for d in dtypes for _ in range(args.rounds) for s in sides]
    for c, d, s in (bar := tqdm(jobs, desc="train steps", unit="run")):
        runs.append(run_side(args, s, c, d))
        r = runs[-1]
        bar.write(f"  {c} {d} {s}: " + (f"{r['tok_s']:.0f} tok/s" if "tok_s" in r else f"FAILED {r.get('error')}"))
    results = []
    for c, d, s in dict.fromkeys((c, d, s) for c, d, s in jobs):
        mine = [r for r in runs if (r["config"], r["dtype"], r["side"]) == (c, d, s)]
        ok = [r for r in mine if "tok_s" in r]
        if not ok:
            results.append(mine[0])
            continue
        best = sorted(ok, key=lambda r: r["tok_s"])[(len(ok) - 1) // 2]  # the (lower) median round
        results.append(dict(best, rounds=[r["tok_s"] for r in ok], peak_rss_mb=max(r["peak_rss_mb"] for r in ok)))

    peaks = {d: max(peaks[d], matmul_peak(d, args.threads)) for d in dtypes}
    print(f"\nbatch {args.batch}x{args.seq}, {args.threads} threads, median of {args.steps} steps after {args.warmup} "
          f"warm-up, median of {args.rounds} interleaved round(s)")
    print(f"matmul peak ({args.threads} threads): " + ", ".join(f"{d} {v / 1e9:.1f} GFLOP/s" for d, v in peaks.items()))
    header = (f"{'config':6} {'dtype':5} {'side':14} {'tok/s':>8} {'tok/CPU-s':>9} {'step s':>7} {'peak MB':>8} "
              f"{'GFLOP/s':>8} {'% peak':>7}")
    print(header + "\n" + "-" * len(header))
    summary = []
    for c in configs:
        for d in dtypes:
            rows = {r["side"]: r for r in results if r["config"] == c and r["dtype"] == d}
            for s in sides:
                r = rows.get(s, {})
                if "error" in r or not r:
                    print(f"{c:6} {d:5} {s:14} FAILED: {r.get('error')}")
                    continue
                achieved = r["tok_s"] * r["flops_per_token"]
                r["gflops"], r["frac_peak"] = achieved / 1e9, achieved / peaks[d]
                print(f"{c:6} {d:5} {s:14} {r['tok_s']:8.0f} {r['tok_per_cpu_s']:9.0f} {r['step_s']:7.3f} {r['peak_rss_mb']:8.0f} "
                      f"{r['gflops']:8.1f} {100 * r['frac_peak']:6.1f}%")
            hf = [rows[s] for s in sides if s.startswith("hf") and "tok_s" in rows.get(s, {})]
            if "tok_s" in rows.get("ours", {}) and hf:
                best = max(hf, key=lambda r: r["tok_s"])
                ratio = rows["ours"]["tok_s"] / best["tok_s"]
                best_cpu = max(hf, key=lambda r: r["tok_per_cpu_s"])
                ratio_cpu = rows["ours"]["tok_per_cpu_s"] / best_cpu["tok_per_cpu_s"]
                summary.append({"config": c, "dtype": d, "ours_over_best_hf": ratio, "best_hf": best["side"],
                                "ours_over_best_hf_cpu": ratio_cpu, "best_hf_cpu": best_cpu["side"],
                                "ours_frac_peak": rows["ours"]["frac_peak"]})
                print(f"{'':6} {'':5} ratio ours / {best['side']}: {ratio:.2f}x wall, "
                      f"{ratio_cpu:.2f}x per CPU second (vs {best_cpu['side']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "matmul_peak": peaks, "results": results, "runs": runs, "summary": summary},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
