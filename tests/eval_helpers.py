"""A tiny run directory for the evaluation tests, built from what the repository ships (no ../shared): a byte-level
BPE trained on the embedded demo corpus (training text, never the FLORES evaluation sentences) and a random-init
tiny model in the trainer's checkpoint layout."""

from __future__ import annotations

from pathlib import Path

from serve_helpers import TINY_MODEL, save_checkpoint

DEMO = Path(__file__).resolve().parents[1] / "vernacular" / "data" / "demo"


def make_eval_run(root: Path, seed: int = 0, vocab_size: int = 1024) -> Path:
    from tokenizers import pre_tokenizers, trainers

    from vernacular.model import build_model
    from vernacular.run import RunDir
    from vernacular.tokenizer import SPECIAL_TOKENS
    from vernacular.tokenizer.train import TokenizerConfig, save_tokenizer, skeleton

    run = RunDir(root).create()
    docs = [line for f in sorted(DEMO.glob("*.txt")) for line in f.read_text(encoding="utf-8").splitlines()]
    tok = skeleton()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(docs, trainer=trainer)
    save_tokenizer(tok, run.tokenizer, TokenizerConfig(vocab_size=vocab_size, model_max_length=512))
    save_checkpoint(build_model({**TINY_MODEL, "vocab_size": vocab_size}, seed=seed), run.checkpoints / "step_000001")
    return root
