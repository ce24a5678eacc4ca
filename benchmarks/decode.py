"""Batch-1 decode throughput: our engine (absorbed MLA over the latent cache) vs transformers `generate`, same weights.

    python benchmarks/decode.py                          # tiny preset (~10 M params), 128 new tokens, 2 threads
    python benchmarks/decode.py --new-tokens 64 --repeats 2 --config tiny

Both sides run in this one process on the same random-init weights: ours as a `vernacular.model.Transformer` behind
the serving `Engine` (scheduler thread, sampling, streaming detokenisation included), transformers as
`DeepseekV3ForCausalLM` loaded from our HF export (`vernacular.interop.hf.export_hf`) with its default dynamic KV
cache. Greedy decoding on both, so the generated tokens must agree; the script reports how many do. Besides wall
clock it reports CPU seconds per run (process CPU time: both of our threads, transformers' one): on a shared machine
the wall clock mostly measures how much of a core each side was given, the CPU time what each side spent. Also prints the
KV-cache bytes per token: our latent cache (measured on the LatentKVCache we allocate), the MHA of the same heads
(analytic), and what transformers' cache actually stores (measured after its generate).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora"


def train_tokenizer(out: Path, vocab_size: int) -> Path:
    """A byte-level BPE on NTREX training text, saved by the tokenizer stage (the engine needs one to detokenise)."""
    from tokenizers import pre_tokenizers, trainers

    from vernacular.tokenizer import SPECIAL_TOKENS
    from vernacular.tokenizer.train import TokenizerConfig, save_tokenizer, skeleton

    files = sorted((SHARED / "ntrex128").glob("*.txt"))[:12]
    if files:
        docs = [line for f in files for line in f.read_text(encoding="utf-8").splitlines()[:400]]
    else:  # the NTREX text embedded in the package (train split)
        from vernacular.data.demo_corpus import demo_languages, demo_lines

        docs = [line for lang in demo_languages()[:12] for line in demo_lines(lang, "train")[:400]]
    tok = skeleton()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(docs, trainer=trainer)
    save_tokenizer(tok, out, TokenizerConfig(vocab_size=vocab_size))
    return out


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(median wall seconds, median process CPU seconds, last result) over `repeats` runs after a warm-up."""
    fn()  # warm-up
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", help="model preset or config file (default: tiny, ~10 M params)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-lang", default="eng")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import transformers
    from transformers import DeepseekV3ForCausalLM

    transformers.logging.set_verbosity_error()  # the MTP layer is "unexpected" for transformers; that is expected

    from vernacular.interop.hf import export_hf
    from vernacular.model import build_model
    from vernacular.model.info import count_parameters, kv_cache_bytes_per_token
    from vernacular.serve.engine import Engine
    from vernacular.serve.sampling import SamplingParams
    from vernacular.serve.text import ServingTokenizer

    model = build_model(args.config, seed=args.seed).eval()
    cfg = model.config
    total, active = count_parameters(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        tok = ServingTokenizer(train_tokenizer(Path(tmp) / "tok", cfg.vocab_size))
        hf_dir = export_hf(model, Path(tmp) / "hf")
        hf_models = {impl: DeepseekV3ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                                 experts_implementation=impl).eval()
                     for impl in ("eager", "grouped_mm")}  # fmt: skip
    prompt_text = (SHARED / "flores200-sib" / f"{args.prompt_lang}.txt").read_text(encoding="utf-8").splitlines()[0]
    prompt = tok.encode(prompt_text)
    n = args.new_tokens
    max_len = len(prompt) + n + 1

    engine = Engine(model, tok, max_batch=1, max_model_len=max_len, seed=args.seed).start()
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    ours_s, ours_cpu, ours_out = timed(lambda: engine.complete(prompt, params), args.repeats)
    engine.stop()

    ids = torch.tensor([prompt])

    def hf_generate(hf):
        with torch.inference_mode():
            # explicit mask: generate's inferred one (`ids != pad_token_id`) would drop a BOS equal to the pad id
            return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, use_cache=True, pad_token_id=tok.pad_id,
                               return_dict_in_generate=True)  # fmt: skip

    hf_runs = {impl: timed(lambda: hf_generate(hf), args.repeats) for impl, hf in hf_models.items()}
    best = min(hf_runs, key=lambda k: hf_runs[k][0])
    hf_s, _, hf_out = hf_runs[best]
    best_cpu = min(hf_runs, key=lambda k: hf_runs[k][1])
    hf_cpu = hf_runs[best_cpu][1]
    hf_tokens = hf_out.sequences[0, len(prompt) :].tolist()
    agree = next((i for i, (a, b) in enumerate(zip(ours_out.token_ids, hf_tokens)) if a != b), n)

    # KV cache per token: ours measured on the allocated latent cache, MHA analytic, transformers measured
    latent_measured = engine.cache.nbytes / (engine.cache.num_slots * engine.cache.max_len)
    analytic = kv_cache_bytes_per_token(cfg, dtype_bytes=4)
    cache = getattr(hf_out, "cache", None) or hf_out.past_key_values
    hf_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    hf_per_token = hf_bytes / cache.get_seq_length()

    ours_tps, hf_tps = n / ours_s, n / hf_s
    print(f"config {args.config}: {total / 1e6:.1f} M params ({active / 1e6:.1f} M active), prompt {len(prompt)} "
          f"tokens ({args.prompt_lang}), {n} new tokens, batch 1, fp32, {args.threads} threads, median of "
          f"{args.repeats}")  # fmt: skip
    print(f"{'':32s}{'tok/s':>8s}{'s/run':>8s}{'CPU s/run':>11s}{'CPU ms/tok':>12s}")
    print(f"{'vernacular engine':32s}{ours_tps:8.1f}{ours_s:8.3f}{ours_cpu:11.3f}{ours_cpu / n * 1e3:12.2f}")
    for impl, (sec, cpu, _) in hf_runs.items():
        print(f"{'transformers generate ' + impl:32s}{n / sec:8.1f}{sec:8.3f}{cpu:11.3f}{cpu / n * 1e3:12.2f}")
    print(f"speed-up vs the faster transformers ({best}), wall clock: {ours_tps / hf_tps:.2f}x  (goal >= 5x)")
    print(f"speed-up vs the faster transformers ({best_cpu}), CPU time: {hf_cpu / ours_cpu:.2f}x")
    print(f"greedy tokens identical for the first {agree} of {n}")
    print("KV cache bytes/token (fp32, all layers):")
    print(f"  MLA latent (ours, measured)       {latent_measured:10.0f}   analytic {analytic.latent}")
    print(f"  MHA with the same heads (analytic) {analytic.mha:9d}   ratio {analytic.mha / analytic.latent:.1f}x")
    print(f"  transformers DynamicCache (meas.)  {hf_per_token:9.0f}   ratio {hf_per_token / latent_measured:.1f}x"
          "  (transformers 5.x also caches the latent, but re-expands the whole prefix through kv_b_proj every step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
