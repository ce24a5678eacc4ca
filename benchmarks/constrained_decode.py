"""Per-token overhead of grammar-constrained decoding (structured outputs) vs free decoding, at batch 1 and 16.

    python benchmarks/constrained_decode.py --threads 1            # random-init `tiny` preset, vocabulary 8192
    python benchmarks/constrained_decode.py --run-dir runs/demo    # a real run directory

Both kinds run in the same engine on the same weights, one after the other, each `--repeats` times (best kept): B
requests of T tokens each, free (plain sampling) and constrained by a JSON schema through llguidance (an
object holding one string of at least 4000 characters: the grammar stays open, and `min_tokens = T` keeps
end-of-text masked, so both produce exactly T tokens).
Printed: wall time per decode step and per token, the ratio constrained / free, and the mask's own cost per token
(llguidance's `compute_bitmask` + turning it into a bool row), measured inside the same run. The baseline is free
decoding in our own engine; the constrained path adds only the per-row mask inside the batched step.

Library choice (side by side in the same run, when `outlines-core` is installed): per schema of `SCHEMAS`, compile
time and mask time per token (allowed ids -> bool row over the vocabulary) of llguidance and outlines-core on our
tokenizer, and whether each accepts the schema and keeps every sampled output valid (jsonschema) over `--samples`
random walks. xgrammar is not measured: its wheel pulls triton into a CPU install.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# the timed schema: an object with one long string (as most tokens of a JSON answer are string contents); its
# minLength keeps the grammar open for the whole run, so both kinds produce exactly --tokens tokens
SCHEMA = {"type": "object", "properties": {"text": {"type": "string", "minLength": 4000}}, "required": ["text"]}
SCHEMAS = {
    "array of short strings": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
    "nested object + enum + bounded array": {
        "type": "object", "additionalProperties": False, "required": ["city", "days"],
        "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "array", "minItems": 1,
                       "maxItems": 5, "items": {"type": "object", "additionalProperties": False,
                                                "required": ["temp", "sky"], "properties": {
                                                    "temp": {"type": "integer", "minimum": -40, "maximum": 50},
                                                    "sky": {"enum": ["sun", "rain", "snow"]}}}}}},
    "anyOf + pattern": {"anyOf": [{"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}, {"type": "null"}]},
}  # fmt: skip


class _Outlines:
    """outlines-core on our tokenizer: a Vocabulary of each token's exact bytes."""

    def __init__(self, tok, vocab_size: int):
        from outlines_core import Vocabulary

        table: dict[bytes, list[int]] = {}
        for i in range(tok.vocab_size):
            if i not in tok.special_ids:
                table.setdefault(tok.token_bytes(i), []).append(i)
        self.vocab, self.size, self.eos = Vocabulary(tok.eos_id, table), vocab_size, tok.eos_id

    def compile(self, schema):
        from outlines_core import Guide, Index
        from outlines_core.json_schema import build_regex_from_schema

        return Guide(Index(build_regex_from_schema(json.dumps(schema)), self.vocab))

    def allowed(self, guide):
        row = torch.zeros(self.size, dtype=torch.bool)
        row[torch.tensor(guide.get_tokens(), dtype=torch.long)] = True
        return row


def walk(allowed_fn, advance_fn, done_fn, stop_ids, vocab, gen, max_steps=300) -> tuple[list[int], float, bool]:
    """Sample uniformly among allowed tokens (ending when the grammar allows stopping, after a few tokens); returns
    the tokens, the mean seconds per mask, and whether the grammar finished within max_steps."""
    out, t, finished = [], 0.0, False
    for step in range(max_steps):
        t0 = time.perf_counter()
        allowed = allowed_fn()
        t += time.perf_counter() - t0
        logits = torch.randn(vocab, generator=gen).masked_fill(~allowed, float("-inf"))
        stop = [s for s in stop_ids if allowed[s]]
        if stop and step > 8:
            finished = True
            break
        logits[list(stop_ids)] = float("-inf")
        if not torch.isfinite(logits).any():
            break
        tok = int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
        out.append(tok)
        advance_fn(tok)
        if done_fn():
            finished = True
            break
    return out, t / max(1, step + 1), finished


def compare_libraries(tok, vocab: int, samples: int, seed: int) -> list[str]:
    import jsonschema

    from vernacular.serve.constraints import Constraint, json_schema_grammar, ll_tokenizer

    try:
        outlines = _Outlines(tok, vocab)
    except ImportError:
        outlines = None
    lines = ["| schema | library | compile ms | mask us/token | finished walks | valid among finished |",
             "|---|---|---:|---:|---:|---:|"]
    for name, schema in SCHEMAS.items():
        for lib in ("llguidance", "outlines-core"):
            if lib == "outlines-core" and outlines is None:
                continue
            gen = torch.Generator().manual_seed(seed)
            valid, finished, mask_s, compile_s = 0, 0, [], 0.0
            try:
                for _ in range(samples):
                    t0 = time.perf_counter()
                    if lib == "llguidance":
                        c = Constraint(ll_tokenizer(tok, vocab), json_schema_grammar(schema), vocab)
                        fns = (c.allowed, c.advance, c.is_done)
                    else:
                        g = outlines.compile(schema)
                        fns = (lambda g=g: outlines.allowed(g), g.advance, g.is_finished)
                    compile_s += time.perf_counter() - t0
                    ids, per, done = walk(*fns, tok.stop_ids, vocab, gen)
                    mask_s.append(per)
                    if not done:  # cut by max_steps: unfinished JSON says nothing about the library
                        continue
                    finished += 1
                    try:
                        jsonschema.validate(json.loads(tok.decode(ids)), schema)
                        valid += 1
                    except (ValueError, jsonschema.ValidationError):
                        pass
            except Exception as e:  # a schema the library cannot compile
                lines.append(f"| {name} | {lib} | - | - | cannot compile: {type(e).__name__} | |")
                continue
            lines.append(f"| {name} | {lib} | {1e3 * compile_s / samples:.1f} | "
                         f"{1e6 * sum(mask_s) / len(mask_s):.0f} | {finished}/{samples} | {valid}/{finished} |")  # fmt: skip
    return lines


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
    p.add_argument("--samples", type=int, default=10, help="random walks per schema and library")
    args = p.parse_args()

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
    libs = compare_libraries(tok, vocab, args.samples, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.1f} M parameters, vocabulary {vocab}; {args.tokens} tokens per request; "
          f"llguidance mask: {mask_us:.0f} us per token (compute_bitmask + bool row)")
    print("| batch | free ms/step | constrained ms/step | free ms/token | constrained ms/token | constrained / free |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b, free, cons in rows:
        print(f"| {b} | {1e3 * free / args.tokens:.2f} | {1e3 * cons / args.tokens:.2f} | "
              f"{1e3 * free / (b * args.tokens):.3f} | {1e3 * cons / (b * args.tokens):.3f} | {cons / free:.2f}x |")
    print("\nlibraries on this tokenizer (uniform random walks over the allowed tokens):")
    print("\n".join(libs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
