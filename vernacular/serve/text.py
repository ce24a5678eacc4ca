"""Text in and out of the engine: the run's tokenizer, its chat template, and streaming detokenisation.

Byte-level BPE tokens are byte strings, so one token can hold half of a UTF-8 character ("ő" can be two tokens).
`TextStream` therefore releases only complete characters (via `tokenizers`' own `DecodeStream`), and also holds back
any tail that could still become a stop string, so a client never sees text that later turns out to be the stop.
The chat template is the Jinja template stored in the run's tokenizer_config.json, rendered in a sandbox exactly as
transformers' `apply_chat_template` does, so the server and an exported HF checkpoint format chats identically.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

END_OF_TURN = "<|end|>"  # the chat template closes every turn with it; generation stops there too


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens either as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the GPT-2 byte-to-printable-character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class ServingTokenizer:
    """The run's HF `tokenizers` tokenizer plus what tokenizer_config.json says about it."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer.json in {folder}")
        self.folder = folder
        self.tokenizer = Tokenizer.from_file(str(path))
        cfg_path = folder / "tokenizer_config.json"
        self.config: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        self.bos_token = _token_content(self.config.get("bos_token"))
        self.eos_token = _token_content(self.config.get("eos_token"))
        self.pad_token = _token_content(self.config.get("pad_token"))
        self.chat_template: str | None = self.config.get("chat_template")
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id = self._id(self.bos_token)
        self.eos_id = self._id(self.eos_token)
        self.pad_id = self._id(self.pad_token)
        self.stop_ids = sorted({i for i in (self.eos_id, self._id(END_OF_TURN)) if i is not None})
        self.special_ids = {i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}
        self._byte_level = type(self.tokenizer.decoder).__name__ == "ByteLevel"

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    # ---- encoding / decoding
    def encode(self, text: str, add_special_tokens: bool = True, special_text: bool = False) -> list[int]:
        """Token ids of `text`. The text of a special token (`<|end|>`) stays plain text unless `special_text`, when
        it becomes that control token (what HF `tokenizers` and vLLM do by default). `add_special_tokens`: apply the
        tokenizer's post-processor (BOS/EOS), as in HF."""
        from vernacular.tokenizer.chat import _plain_tokenizer

        tokenizer = self.tokenizer if special_text else _plain_tokenizer(self.tokenizer)
        return tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for (byte-level vocabularies); special tokens give their own text."""
        piece = self.tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if self._byte_level and token_id not in self.special_ids:
            table = _unicode_to_byte()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        return self.tokenizer.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def token_str(self, token_id: int) -> str:
        """One token as text; a token that is only part of a UTF-8 character is spelled `bytes:\\xe2\\x80` (OpenAI)."""
        raw = self.token_bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    # ---- chat
    def _specials(self) -> dict[str, str | None]:
        return {k: _token_content(self.config.get(k)) for k in ("bos_token", "eos_token", "pad_token")}

    def _chat_template(self) -> str:
        if not self.chat_template:
            raise ValueError(f"the tokenizer in {self.folder} has no chat_template; use /v1/completions instead")
        return self.chat_template

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render a conversation with the run's Jinja chat template, the way transformers' apply_chat_template does."""
        from vernacular.tokenizer.chat import render_chat

        return render_chat(messages, add_generation_prompt, template=self._chat_template(), special_tokens=self._specials())

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    tools: list[dict[str, Any]] | None = None) -> list[int]:  # fmt: skip
        """Token ids of a conversation (and its OpenAI tool definitions): special tokens only from the template,
        message text always plain text."""
        from vernacular.tokenizer.chat import encode_chat

        return encode_chat(self.tokenizer, messages, add_generation_prompt, template=self._chat_template(),
                           special_tokens=self._specials(), tools=tools).ids

    def info(self) -> dict[str, Any]:
        """What /tokenizer_info reports (the fields lm-eval's remote tokenizer and vLLM clients read)."""
        return {
            "tokenizer_class": self.config.get("tokenizer_class", "PreTrainedTokenizerFast"),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id,
            "stop_token_ids": self.stop_ids,
            "vocab_size": self.vocab_size,
            "model_max_length": self.config.get("model_max_length"),
            "chat_template": self.chat_template,
        }


class TextStream:
    """Incremental detokeniser for one sequence: feed token ids, get back text that is safe to show.

    Safe means: only complete UTF-8 characters, and nothing that could be the beginning of a stop string. When a stop
    string appears, the text is cut just before it and `stopped` becomes True.
    """

    def __init__(self, tokenizer: ServingTokenizer, stop: list[str] | None = None, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.stop = list(stop or [])
        self.skip_special_tokens = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._ids: list[int] = []
        self.text = ""  # every complete character decoded so far (cut at a stop string once one is found)
        self.released = 0  # how much of self.text has been handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the newly releasable text (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        chunk = self._stream.step(self.tok.tokenizer, token_id)
        if chunk:
            self.text += chunk
        return self._release(final=False)

    def finish(self) -> str:
        """The sequence ended: release what was held back. Bytes of a character that the last token left incomplete
        (the tokenizer decodes them to one U+FFFD) are dropped, as vLLM's incremental detokenizer never emits them:
        the client gets whole characters only."""
        if not self.stopped:
            full = self.tok.decode(self._ids, skip_special_tokens=self.skip_special_tokens)
            if full.startswith(self.text):
                self.text = full.removesuffix("\ufffd") if len(full) > len(self.text) else full
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stop and not self.stopped:
            # a stop string can only start where it could still overlap unreleased text
            start = max(0, self.released - max(len(s) for s in self.stop) + 1)
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
        end = len(self.text)
        if not final and not self.stopped:
            end -= self._held_back()
        end = max(end, self.released)
        out = self.text[self.released : end]
        self.released = end
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best


def offsets_and_text(tokenizer: ServingTokenizer, ids: list[int], skip_special_tokens: bool) -> tuple[list[int], str]:
    """Character offset of each token in the decoded text (OpenAI's `text_offset`), and that text, in one pass."""
    stream = DecodeStream(skip_special_tokens=skip_special_tokens)
    offsets, length, parts = [], 0, []
    for i in ids:
        offsets.append(length)
        chunk = stream.step(tokenizer.tokenizer, i)
        if chunk:
            parts.append(chunk)
            length += len(chunk)
    return offsets, "".join(parts)
