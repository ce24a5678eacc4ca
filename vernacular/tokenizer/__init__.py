"""The language-fair tokenizer: byte-level BPE, special tokens, chat template, parity report.

The special-token strings below are an interface: the data stage frames documents with BOS/EOS, the trainer pads with
PAD, the server renders chats with the role tokens and stops at END. Their ids are fixed by their order (BOS = 0,
EOS = 1, ...), because they are the first entries of every vocabulary we train.
"""

from __future__ import annotations

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"  # end of one chat turn

SPECIAL_TOKENS: list[str] = [BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END]
BOS_ID, EOS_ID, PAD_ID, SYSTEM_ID, USER_ID, ASSISTANT_ID, END_ID = range(len(SPECIAL_TOKENS))


def load(path):
    """The HF `tokenizers.Tokenizer` of a tokenizer folder (or of a tokenizer.json file itself)."""
    from pathlib import Path

    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: train one with `vernacular tokenizer --run-dir DIR`")
    return Tokenizer.from_file(str(path))


def render_chat(messages, add_generation_prompt: bool = True) -> str:
    """Render a chat with the same Jinja template that tokenizer_config.json ships (one source of truth)."""
    from vernacular.tokenizer.chat import render_chat as _render

    return _render(messages, add_generation_prompt=add_generation_prompt)
