"""Shared by the engine tests (vLLM, llama.cpp): a tiny exported model with a real tokenizer, and our own outputs.

The tokenizer is our byte-level BPE (`vernacular.tokenizer.train.skeleton`: NFC, GPT-2 regex, byte-level) trained on
the demo corpus that ships inside the package, saved by the tokenizer stage with its chat template. The model is a
random-init tiny DeepSeek-V3 (`init` 0.2 so the logits are far from flat, norms away from 1, a router bias that changes
routing), so agreement with another engine is a real check of every part of the mapping. "Ours" is the serving
`Engine` (latent KV cache, absorbed MLA), greedy.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 512
PROMPTS = [
    "The European Parliament met in Strasbourg",
    "Die Katze schläft auf dem warmen Fensterbrett.",
    "Ελλάδα, Polska i España: języki Europy",
]
NEW_TOKENS = 32

MODEL = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
    num_attention_heads=4, q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16,
    v_head_dim=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
    routed_scaling_factor=1.5, first_k_dense_replace=1, max_position_embeddings=256, num_nextn_predict_layers=1,
    initializer_range=0.2,
)  # fmt: skip
# The same model with DeepSeek-V3's MLA dims (kv_lora_rank 512 + qk_rope_head_dim 64 = 576), which vLLM serves
# through its MLA kernels (its CPU MLA decode kernel takes only 576), and a low-rank query.
MODEL_576 = {**MODEL, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 32, "v_head_dim": 32,
             "q_lora_rank": 48}  # fmt: skip


def train_tokenizer(out_dir: Path) -> Path:
    from tokenizers import pre_tokenizers, trainers

    from vernacular.tokenizer import SPECIAL_TOKENS
    from vernacular.tokenizer.train import TokenizerConfig, save_tokenizer, skeleton

    from vernacular.data.demo_corpus import demo_languages, demo_lines

    docs = [line for lang in demo_languages() for line in demo_lines(lang, "train")[:200]]
    assert docs, "the embedded demo corpus is empty"
    tok = skeleton()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(docs, trainer=trainer)
    save_tokenizer(tok, out_dir, TokenizerConfig(vocab_size=VOCAB, model_max_length=256))
    return out_dir


def randomize_norms_and_router_bias(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Norm weights away from 1 and a random router bias that changes routing, so a consumer that ignores either
    (or the bias's sign) cannot agree by accident; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("e_score_correction_bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
            elif "norm" in name:
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
    return model.eval()


def make_model(seed: int = 0, **overrides):
    from vernacular.model import build_model

    return randomize_norms_and_router_bias(build_model({**MODEL, **overrides}, seed=seed), seed + 1)


def make_run(root: Path, seed: int = 0, **overrides) -> Path:
    """A run directory: tokenizer/ and checkpoints/step_000001 (our checkpoint format)."""
    from vernacular.interop.hf import save_checkpoint
    from vernacular.run import RunDir

    run = RunDir(root).create()
    train_tokenizer(run.tokenizer)
    save_checkpoint(make_model(seed, **overrides), run.checkpoints / "step_000001")
    return root


def prompt_ids(tokenizer_dir: Path) -> list[list[int]]:
    from vernacular.serve.text import ServingTokenizer

    tok = ServingTokenizer(tokenizer_dir)
    return [[tok.bos_id] + tok.encode(p, add_special_tokens=False) for p in PROMPTS]


def ours(run: Path, prompts: list[list[int]], new_tokens: int = NEW_TOKENS) -> list[dict]:
    """Greedy continuations and prompt logprobs from our serving engine: [{"tokens": [...], "prompt_logprobs": [...]}]."""
    from vernacular.interop.hf import latest_checkpoint, load_checkpoint
    from vernacular.run import RunDir
    from vernacular.serve.engine import Engine
    from vernacular.serve.sampling import SamplingParams
    from vernacular.serve.text import ServingTokenizer

    model = load_checkpoint(latest_checkpoint(run))
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, prompt_logprobs=0)
    out = []
    with Engine(model, ServingTokenizer(RunDir(run).tokenizer), max_batch=2) as engine:
        for ids in prompts:
            c = engine.complete(ids, params)
            out.append({"tokens": c.token_ids, "prompt_logprobs": [None if p is None else p.logprob
                                                                    for p in c.prompt_logprobs]})
    return out


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path
