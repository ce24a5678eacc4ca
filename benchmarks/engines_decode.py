"""Batch-1 greedy decode, side by side on the same weights and threads: our engine, llama.cpp (our GGUF export, f32 and
q8_0, through llama-cpp-python) and transformers `generate` (our HF export).

    python benchmarks/engines_decode.py                                  # tiny preset, 128 new tokens, 1 thread
    python benchmarks/engines_decode.py --threads 2 --new-tokens 64 --repeats 5

One process, one random-init model (`build_model(config, seed)`), exported by `vernacular.interop` (HF and GGUF). The
tokenizer is a byte-level BPE trained on NTREX text (`../shared/corpora`, else the package's demo corpus); the prompt
is the first FLORES `eng` sentence (else a fixed one). Each side runs `--repeats` timed runs after a warm-up; the table
gives the median wall clock, tok/s, CPU seconds of this process, and how many greedy tokens agree with ours (f32
sides should agree on all; q8_0 is a different model). Ratios are each engine's tok/s over ours.

Needs llama-cpp-python==0.3.36 (a source build; `.ci/run` builds it). Figures: BENCHMARKS.md, "Batch-1 decode".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import timed, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora"
PROMPT = "The European Parliament adopted the new rules on Tuesday after a long debate."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", help="model preset or config file (default: tiny, ~10 M params)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import llama_cpp
    import transformers
    from transformers import DeepseekV3ForCausalLM

    transformers.logging.set_verbosity_error()  # the MTP layer is "unexpected" for transformers; that is expected

    from vernacular.interop.gguf_export import export_gguf
    from vernacular.interop.hf import export_hf
    from vernacular.model import build_model
    from vernacular.model.info import count_parameters
    from vernacular.serve.engine import Engine
    from vernacular.serve.sampling import SamplingParams
    from vernacular.serve.text import ServingTokenizer

    model = build_model(args.config, seed=args.seed).eval()
    cfg = model.config
    total, active = count_parameters(cfg)
    n = args.new_tokens
    tmp = Path(tempfile.mkdtemp(prefix="engines_decode_"))
    tok_dir = train_tokenizer(tmp / "tok", cfg.vocab_size)
    tok = ServingTokenizer(tok_dir)
    flores = SHARED / "flores200-sib" / "eng.txt"
    prompt_text = flores.read_text(encoding="utf-8").splitlines()[0] if flores.exists() else PROMPT
    prompt = [tok.bos_id] + tok.encode(prompt_text, add_special_tokens=False)
    hf = DeepseekV3ForCausalLM.from_pretrained(export_hf(model, tmp / "hf"), dtype=torch.float32,
                                               experts_implementation="grouped_mm").eval()  # fmt: skip
    ggufs = {t: export_gguf(model, tmp / f"m-{t}.gguf", tok_dir, qtype=t) for t in ("f32", "q8_0")}

    rows = {}
    engine = Engine(model, tok, max_batch=1, max_model_len=len(prompt) + n + 1, seed=args.seed).start()
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    wall, cpu, out = timed(lambda: engine.complete(prompt, params).token_ids, args.repeats)
    engine.stop()
    rows["vernacular engine (fp32)"] = (wall, cpu, out)
    ours = out

    for qtype, path in ggufs.items():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + n + 8, n_threads=args.threads,
                              n_threads_batch=args.threads, seed=args.seed, verbose=False)  # fmt: skip

        def run_llama(llm=llm):
            llm.reset()
            got = []
            for t in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
                got.append(int(t))
                if len(got) == n:
                    return got

        rows[f"llama.cpp GGUF {qtype} (f16 KV)"] = timed(run_llama, args.repeats)
        llm.close()

    ids = torch.tensor([prompt])
    # like our ignore_eos: never stop, but do not mask the end tokens either (min_new_tokens would, changing the argmax)
    hf.generation_config.eos_token_id = None
    # an explicit all-ones mask: without one, generate infers it as `ids != pad_token_id`, and a pad id equal to the
    # BOS id (0) masked the BOS out of the prompt (the 0/128 agreement of the first version of this benchmark)

    def hf_generate():
        with torch.inference_mode():
            seq = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                              use_cache=True, pad_token_id=tok.pad_id)  # fmt: skip
        return seq[0, len(prompt) :].tolist()

    rows["transformers generate (fp32)"] = timed(hf_generate, args.repeats)

    print(f"config {args.config}: {total / 1e6:.1f} M params ({active / 1e6:.1f} M active), prompt {len(prompt)} tokens,"
          f" {n} new tokens, batch 1, greedy, {args.threads} thread(s), median of {args.repeats}; llama.cpp "
          f"{llama_cpp.__version__}, transformers {transformers.__version__}")  # fmt: skip
    print(f"{'':34s}{'tok/s':>9s}{'s/run':>8s}{'CPU s/run':>11s}{'x ours':>8s}{'agree':>8s}")
    ours_tps = n / rows["vernacular engine (fp32)"][0]
    for name, (wall, cpu, got) in rows.items():
        agree = next((i for i, (a, b) in enumerate(zip(ours, got)) if a != b), min(len(ours), len(got)))
        print(f"{name:34s}{n / wall:9.1f}{wall:8.3f}{cpu:11.3f}{n / wall / ours_tps:8.2f}{agree:>5d}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
