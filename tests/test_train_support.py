"""Shared fixtures of the training tests: a run directory of real NTREX text (the embedded corpus) through the real
data stage."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from vernacular.data.demo_corpus import demo_lines

LANGS = ("deu", "fra", "pol")
TINY = {  # a ~0.3 M parameter model of the same architecture: dense layer + MoE layer + MTP, group-limited routing
    "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16,
    "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
    "first_k_dense_replace": 1, "max_position_embeddings": 256, "num_nextn_predict_layers": 1, "vocab_size": 512,
}


def make_run(root: Path, lines: int = 240) -> Path:
    """A run directory built by the real data stage: `vernacular data` on NTREX lines of LANGS, a small byte-level
    BPE in tokenizer/tokenizer.json, `write_shards` into data/tokens, plus model.json (the TINY config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from vernacular.cli import main
    from vernacular.data.shards import write_shards

    root = Path(root)
    source = root.parent / f"{root.name}-source"
    source.mkdir(parents=True, exist_ok=True)
    texts = {}
    for lang in LANGS:
        texts[lang] = demo_lines(lang)[:lines]
        (source / f"{lang}.txt").write_text("\n".join(texts[lang]) + "\n", encoding="utf-8")
    assert main(["data", "--run-dir", str(root), "--source", str(source), "--workers", "1", "--tasks", "1",
                 "--val-fraction", "0.15"]) == 0

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tok.train_from_iterator([t for v in texts.values() for t in v],
                            trainers.BpeTrainer(vocab_size=TINY["vocab_size"], special_tokens=specials))
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "tokenizer" / "tokenizer.json"))
    write_shards(root, root / "tokenizer" / "tokenizer.json")
    (root / "model.json").write_text(json.dumps(TINY))
    return root


def cli_command(*args: str) -> list[str]:
    """`vernacular ...` as a subprocess, with this interpreter."""
    return [sys.executable, "-m", "vernacular", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env
