"""Per-token overhead of grammar-constrained decoding (structured outputs) vs free decoding, at batch 1 and 16.

    python benchmarks/constrained_decode.py --threads 1            # random-init `tiny` preset, vocabulary 8192
    python benchmarks/constrained_decode.py --run-dir runs/demo    # a real run directory

Both kinds run in the same engine on the same weights, one after the other, each `--repeats` times (best kept): B
requests of T tokens each, free (plain sampling) and constrained by a JSON schema through llguidance (an array of
strings: the grammar never runs out, and `min_tokens = T` keeps end-of-text masked, so both produce exactly T tokens).
Printed: wall time per decode step and per token, the ratio constrained / free, and the mask's own cost per token
(llguidance's `compute_bitmask` + turning it into a bool row), measured inside the same run. The baseline is free
decoding in our own engine; the constrained path adds only the per-row mask inside the batched step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SCHEMA = {"type": "array", "items": {"type": "string"}}


def measure(engine, prompt: list[int], batch: int, tokens: int, grammar, repeats: int) -> float:
    """Best wall seconds for `batch` concurrent requests of `tokens` tokens each."""
    import queue

    from vernacular.serve.sampling import SamplingParams

    best = float("inf")
    for r in range(repeats):
        q: queue.Queue = queue.Queue()
        params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=1.0, seed=r)
        t0 = time.perf_counter()
        with engine._cv:  # all join the same batch
            for _ in range(batch):
                engine.submit(prompt, params, q.put, stream=False, constraint=grammar.make() if grammar else None)
        outs = [q.get() for _ in range(batch)]
        best = min(best, time.perf_counter() - t0)
        assert all(o.completion_tokens == tokens and o.finish_reason == "length" for o in outs), \
            [(o.completion_tokens, o.finish_reason, o.error) for o in outs]  # fmt: skip
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, help="a run directory (default: prepare a random-init one)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--tokens", type=int, default=64, help="tokens per request")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from serve_load import prepare_run

    from vernacular.serve.constraints import ConstraintFactory, json_schema_grammar
    from vernacular.serve.engine import Engine
    from vernacular.serve.loading import find_tokenizer_dir, load_model_for_serving
    from vernacular.serve.text import ServingTokenizer

    with tempfile.TemporaryDirectory(prefix="vernacular-constrained-") as tmp:
        run = args.run_dir or prepare_run(Path(tmp) / "run", args.preset, args.vocab_size, args.seed)
        model, ckpt = load_model_for_serving(run)
        tok = ServingTokenizer(find_tokenizer_dir(ckpt, run))
    batches = [int(b) for b in args.batches.split(",")]
    vocab = model.config.vocab_size
    grammar = ConstraintFactory(tok, vocab, json_schema_grammar(SCHEMA), "bench")
    prompt = tok.encode_chat([{"role": "user", "content": "List some words as JSON."}])

    # the mask's own cost: one constraint stepped through a valid sequence
    c = grammar.make()
    gen = torch.Generator().manual_seed(args.seed)
    t_mask, steps = 0.0, 256
    for _ in range(steps):
        t0 = time.perf_counter()
        allowed = c.allowed()
        t_mask += time.perf_counter() - t0
        logits = torch.randn(vocab, generator=gen).masked_fill(~allowed, float("-inf"))
        logits[list(tok.stop_ids)] = float("-inf")
        c.advance(int(torch.multinomial(logits.softmax(-1), 1, generator=gen)))
    mask_us = 1e6 * t_mask / steps

    rows = []
    with Engine(model, tok, max_batch=max(batches), max_model_len=len(prompt) + args.tokens + 8, seed=args.seed) as eng:
        measure(eng, prompt, 2, 8, grammar, 1)  # warm-up
        for b in batches:
            free = measure(eng, prompt, b, args.tokens, None, args.repeats)
            constrained = measure(eng, prompt, b, args.tokens, grammar, args.repeats)
            rows.append((b, free, constrained))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.1f} M parameters, vocabulary {vocab}; {args.tokens} tokens per request; "
          f"llguidance mask: {mask_us:.0f} us per token (compute_bitmask + bool row)")
    print("| batch | free ms/step | constrained ms/step | free ms/token | constrained ms/token | constrained / free |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b, free, cons in rows:
        print(f"| {b} | {1e3 * free / args.tokens:.2f} | {1e3 * cons / args.tokens:.2f} | "
              f"{1e3 * free / (b * args.tokens):.3f} | {1e3 * cons / (b * args.tokens):.3f} | {cons / free:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
