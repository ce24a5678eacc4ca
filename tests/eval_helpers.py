"""A tiny run directory for the evaluation tests, built from what the repository ships (no ../shared): a byte-level
BPE trained on the embedded demo corpus (training text, never the FLORES evaluation sentences) and a random-init
tiny model in the trainer's checkpoint layout."""

from __future__ import annotations

from pathlib import Path

from serve_helpers import TINY_MODEL, save_checkpoint



def make_eval_run(root: Path, seed: int = 0, vocab_size: int = 1024) -> Path:
    from tokenizers import pre_tokenizers, trainers

    from vernacular.model import build_model
    from vernacular.run import RunDir
    from vernacular.tokenizer import SPECIAL_TOKENS
    from vernacular.tokenizer.train import TokenizerConfig, save_tokenizer, skeleton

    run = RunDir(root).create()
    from vernacular.data.demo_corpus import demo_languages, demo_lines

    docs = [line for lang in demo_languages() for line in demo_lines(lang, "train")[:200]]
    tok = skeleton()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(docs, trainer=trainer)
    save_tokenizer(tok, run.tokenizer, TokenizerConfig(vocab_size=vocab_size, model_max_length=512))
    save_checkpoint(build_model({**TINY_MODEL, "vocab_size": vocab_size}, seed=seed), run.checkpoints / "step_000001")
    return root
