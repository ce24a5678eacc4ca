"""Shared fixtures of the serving tests: a tiny run directory with a real tokenizer and a random-init checkpoint.

The tokenizer is a byte-level BPE trained on NTREX lines of the embedded corpus (real text in many scripts, so
multi-byte characters and split-character tokens actually occur) and saved by the tokenizer stage's own `save_tokenizer`, chat template included.
The model is `build_model(seed)` of a very small config, saved in the trainer's checkpoint layout.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from pathlib import Path

from corpus_fixtures import demo_lines


def sentence(lang: str, i: int = 0) -> str:
    """Sentence i of the embedded corpus' held-out (validation) articles in `lang`: real text, aligned."""
    return demo_lines(lang, "val")[i]


TINY_MODEL = dict(
    vocab_size=1024, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=2, q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
    v_head_dim=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
    first_k_dense_replace=1, max_position_embeddings=512, num_nextn_predict_layers=0, initializer_range=0.2,
)  # fmt: skip
LANGS = ["eng", "deu", "fra", "ell", "bul", "pol", "hun", "fin"]


def train_tokenizer(out_dir: Path, vocab_size: int = 1024, lines_per_lang: int = 300) -> Path:
    from tokenizers import pre_tokenizers, trainers

    from vernacular.tokenizer import SPECIAL_TOKENS
    from vernacular.tokenizer.train import TokenizerConfig, save_tokenizer, skeleton

    docs = []
    for lang in LANGS:
        docs += demo_lines(lang)[:lines_per_lang]
    tok = skeleton()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(docs, trainer=trainer)
    save_tokenizer(tok, out_dir, TokenizerConfig(vocab_size=vocab_size, model_max_length=512))
    return out_dir


def save_checkpoint(model, folder: Path, step: int = 1) -> Path:
    """The trainer's layout: model.safetensors + state.json with the config and the weights' sha256."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "state.json").write_text(json.dumps({
        "step": step, "model_config": model.config.to_dict(),
        "files": {"model.safetensors": {"sha256": digest, "bytes": (folder / "model.safetensors").stat().st_size}},
    }))  # fmt: skip
    return folder


def make_run(root: Path, seed: int = 0, **overrides) -> Path:
    """A run directory with tokenizer/ and checkpoints/step_000001/ (random-init tiny model)."""
    from vernacular.model import build_model
    from vernacular.run import RunDir

    run = RunDir(root).create()
    train_tokenizer(run.tokenizer)
    model = build_model({**TINY_MODEL, **overrides}, seed=seed)
    save_checkpoint(model, run.checkpoints / "step_000001")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn in a background thread on a free port, for clients that speak real HTTP."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
