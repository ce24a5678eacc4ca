"""Shared fixtures of the training tests: a run directory with real NTREX text tokenised by a small BPE.

It uses the data stage's own loader (vernacular.data.loader) when that module exists; until then it installs a
minimal stand-in with the same interface, so the trainer's tests run on real text either way.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
LANGS = ("deu", "fra", "pol")
TINY = {  # a ~0.3 M parameter model of the same architecture: dense layer + MoE layer + MTP, group-limited routing
    "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16,
    "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
    "first_k_dense_replace": 1, "max_position_embeddings": 256, "num_nextn_predict_layers": 1, "vocab_size": 512,
}


def _has_real_loader() -> bool:
    import vernacular.data

    return (Path(vernacular.data.__file__).parent / "loader.py").exists()


def make_run(root: Path, lines: int = 240) -> Path:
    """RunDir with tokenizer/tokenizer.json, data/tokens/{train,val}, and model.json (the TINY config)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    root = Path(root)
    texts = {lang: (CORPORA / "ntrex128" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:lines]
             for lang in LANGS}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tok.train_from_iterator([t for v in texts.values() for t in v],
                            trainers.BpeTrainer(vocab_size=TINY["vocab_size"], special_tokens=specials))
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "tokenizer" / "tokenizer.json"))
    if _has_real_loader():
        from vernacular.data.shards import write_shards_from_texts  # noqa: F401 - adapt once the data stage lands

        raise RuntimeError("switch the fixture to the data stage's shard writer")
    bos, eos = tok.token_to_id(specials[0]), tok.token_to_id(specials[1])
    n_val = lines // 6
    for split, sl in (("train", slice(n_val, None)), ("val", slice(0, n_val))):
        out = root / "data" / "tokens" / split
        out.mkdir(parents=True, exist_ok=True)
        for lang, docs in texts.items():
            ids = [i for d in docs[sl] for i in [bos, *tok.encode(d).ids, eos]]
            np.asarray(ids, dtype=np.uint32).tofile(out / f"{lang}.bin")
            meta = {"bytes": sum(len(d.encode()) for d in docs[sl]), "tokens": len(ids)}
            (out / f"{lang}.json").write_text(json.dumps(meta))
    (root / "model.json").write_text(json.dumps(TINY))
    return root


class StandInTokenLoader:
    """Same interface as vernacular.data.loader.TokenLoader: sequence i of the global order goes to rank i % W."""

    def __init__(self, tokens_dir, split="train", batch_size=4, seq_len=64, rank=0, world_size=1, seed=0, lang=None):
        langs = [lang] if lang else _languages(tokens_dir, split)
        data = [np.fromfile(Path(tokens_dir) / split / f"{lg}.bin", dtype=np.uint32) for lg in langs]
        self.data = np.concatenate(data).astype(np.int64)
        self.B, self.T, self.rank, self.ws = batch_size, seq_len, rank, world_size
        self.n_seq = (len(self.data) - 1) // seq_len
        perm = np.random.default_rng(seed).permutation(self.n_seq) if split == "train" else np.arange(self.n_seq)
        self.order, self.pos = perm, 0

    def next_batch(self):
        rows = []
        for b in range(self.B):
            i = int(self.order[((self.pos + b) * self.ws + self.rank) % self.n_seq])
            rows.append(torch.from_numpy(self.data[i * self.T: i * self.T + self.T + 1]))
        self.pos += self.B
        return torch.stack(rows)

    def iter_batches(self, max_batches):
        for _ in range(min(max_batches, self.n_seq // (self.B * self.ws))):
            yield self.next_batch()

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def _languages(tokens_dir, split):
    return sorted(p.stem for p in (Path(tokens_dir) / split).glob("*.bin"))


def _bytes_per_token(tokens_dir, lang, split="val"):
    meta = json.loads((Path(tokens_dir) / split / f"{lang}.json").read_text())
    return meta["bytes"] / meta["tokens"]


def install_loader() -> None:
    if _has_real_loader():
        return
    module = types.ModuleType("vernacular.data.loader")
    module.TokenLoader, module.languages, module.bytes_per_token = StandInTokenLoader, _languages, _bytes_per_token
    sys.modules["vernacular.data.loader"] = module


def cli_command(*args: str) -> list[str]:
    """`vernacular ...` as a subprocess that sees the same loader as the in-process tests."""
    code = ("import sys; sys.path.insert(0, {!r}); import test_train_support as s; s.install_loader(); "
            "from vernacular.cli import main; sys.exit(main(sys.argv[1:]))").format(str(Path(__file__).parent))
    return [sys.executable, "-c", code, *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env
