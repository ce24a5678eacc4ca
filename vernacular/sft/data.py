"""Chat fine-tuning data: OpenAI-style JSONL conversations -> checked, tokenised, split, packed rows.

One record per line, as OpenAI's fine-tuning files and TRL's "conversational" datasets:

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

`role` is system, developer, user, assistant or tool; `content` a string or a list of text parts
(`[{"type": "text", "text": "..."}]`). Tool use as in the OpenAI API: the record's `tools` (function definitions),
assistant messages with `tool_calls` (content may then be null) and `tool` messages with the results. Conversations are rendered and tokenised by `vernacular.tokenizer.chat.
encode_chat` (the one place messages become tokens), whose assistant mask selects the tokens the model learns from:
each assistant turn's content and its end-of-turn token.

Bad records are never a crash: each is counted under one reason (`REJECT_REASONS`) and written, with its file, line
and text, to the run's rejects file.

Packing (`PackedLoader`): conversations are laid end to end into rows of `seq_len` tokens; `position_ids` restart at
0 with each conversation, which is how the model (`Transformer.forward(position_ids=...)`) keeps attention inside a
conversation. The row tail that no further conversation fits is padding, ignored by the loss.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from vernacular.data.languages import to_iso639_3
from vernacular.tokenizer import PAD_ID
from vernacular.tokenizer.chat import ROLES, ChatTemplateError, content_text, encode_chat

IGNORE_INDEX = -100
DEMO_DIR = Path(__file__).resolve().parent / "demo"
REJECT_REASONS = ("invalid_json", "not_a_conversation", "unknown_role", "invalid_content", "empty_content",
                  "no_assistant_turn", "too_long")


@dataclass
class Conversation:
    """One accepted record: its messages, where it came from, its language (from a `<iso639-3>.jsonl` file name or a
    `lang`/`language` field; None if neither), and its tokens (`ids`, `assistant_mask`, as `encode_chat` gives)."""

    messages: list[dict]
    source: str
    lang: str | None
    ids: list[int] = field(repr=False)
    assistant_mask: list[int] = field(repr=False)
    tools: list[dict] | None = field(default=None, repr=False)  # OpenAI tool definitions offered in the chat

    @property
    def key(self) -> str:
        """A content hash: the split is a function of the conversation, not of file order."""
        record = {"messages": self.messages, "tools": self.tools}
        return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class Dataset:
    train: list[Conversation]
    val: list[Conversation]
    rejected: Counter  # reason -> count
    records: int  # lines read (blank lines aside)
    files: list[str]

    def summary(self) -> dict[str, Any]:
        langs = Counter(c.lang or "unknown" for c in self.train + self.val)
        replay = sum(c.source.startswith("replay:") for c in self.train)  # made by `replay_conversations`
        return {"files": self.files, "records": self.records, "accepted": len(self.train) + len(self.val) - replay,
                "train": len(self.train), "val": len(self.val), "replay": replay,
                "train_tokens": sum(len(c.ids) for c in self.train),
                "train_assistant_tokens": sum(sum(c.assistant_mask) for c in self.train),
                "rejected": {r: self.rejected.get(r, 0) for r in REJECT_REASONS},
                "languages": dict(sorted(langs.items()))}


def default_sources() -> list[Path]:
    """The embedded demo conversations (`vernacular/sft/demo/<iso639-3>.jsonl`)."""
    return sorted(DEMO_DIR.glob("*.jsonl"))


def expand_sources(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a folder stands for its `*.jsonl` files. Raises FileNotFoundError for a missing path."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.glob("*.jsonl"))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"SFT data {p} does not exist")
    return out


def check_record(record: Any) -> tuple[str, str] | None:
    """(reason, detail) if `record` (a parsed JSON line) is not a usable conversation, else None."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        return "not_a_conversation", 'expected {"messages": [{"role": ..., "content": ...}, ...]}'
    if record.get("tools") is not None and not isinstance(record["tools"], list):
        return "not_a_conversation", "tools must be a list of OpenAI tool definitions"
    for i, m in enumerate(record["messages"]):
        if not isinstance(m, dict) or "role" not in m:
            return "not_a_conversation", f"message {i} is not a {{'role', 'content'}} object"
        calls = m["role"] == "assistant" and bool(m.get("tool_calls"))
        if "content" not in m and not calls:
            return "not_a_conversation", f"message {i} has no content"
        if m["role"] not in ROLES:
            return "unknown_role", f"message {i} has role {m['role']!r} (expected {', '.join(ROLES)})"
        try:
            text = content_text(m.get("content"))
        except ChatTemplateError as e:
            return "invalid_content", f"message {i}: {e}"
        if not text.strip() and not calls:
            return "empty_content", f"message {i} ({m['role']}) has empty content"
    if not any(m["role"] == "assistant" for m in record["messages"]):
        return "no_assistant_turn", "no assistant message to learn from"
    return None


def _file_lang(path: Path) -> str | None:
    return to_iso639_3(path.stem)


def load_conversations(paths: Iterable[Path], tokenizer, max_tokens: int, rejects_path: Path | None = None,
                       val_fraction: float = 0.1) -> Dataset:
    """Read, check and tokenise every record of `paths`; split off a validation set.

    `max_tokens`: longest accepted conversation in tokens (the training context + 1, since inputs and targets are
    the tokens shifted by one). Rejected records go to `rejects_path` as JSONL {"source", "reason", "detail",
    "record"}. The split is per language (file): sorted by content hash, the first ceil(val_fraction * n)
    conversations of each language are held out (at least one when the language has two or more), so the split is
    deterministic and does not change when other records are added or reordered.
    """
    paths = list(paths)
    rejected: Counter = Counter()
    accepted: list[Conversation] = []
    records = 0
    rejects = []
    for path in paths:
        file_lang = _file_lang(path)
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                records += 1
                source = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    reason, detail = "invalid_json", str(e)
                else:
                    problem = check_record(record)
                    if problem is None:
                        try:
                            enc = encode_chat(tokenizer, record["messages"], add_generation_prompt=False,
                                              tools=record.get("tools"))
                        except ChatTemplateError as e:  # e.g. malformed tool calls
                            enc, problem = None, ("invalid_content", str(e))
                    if problem is None:
                        if len(enc.ids) > max_tokens:
                            problem = "too_long", f"{len(enc.ids)} tokens > {max_tokens} (the training context + 1)"
                        else:
                            lang = file_lang or to_iso639_3(record.get("lang") or record.get("language"))
                            accepted.append(Conversation(record["messages"], source, lang, enc.ids,
                                                         enc.assistant_mask, record.get("tools")))
                            continue
                    reason, detail = problem
                rejected[reason] += 1
                rejects.append({"source": source, "reason": reason, "detail": detail, "record": line.rstrip("\n")})
    if rejects_path is not None:
        from vernacular.run import atomic_write_bytes

        atomic_write_bytes(rejects_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects).encode())

    by_lang: dict[str | None, list[Conversation]] = {}
    for c in accepted:
        by_lang.setdefault(c.lang, []).append(c)
    train, val = [], []
    for lang in sorted(by_lang, key=str):
        convs = sorted(by_lang[lang], key=lambda c: c.key)
        n_val = math.ceil(val_fraction * len(convs)) if len(convs) >= 2 and val_fraction > 0 else 0
        val += convs[:n_val]
        train += convs[n_val:]
    return Dataset(train, val, rejected, records, [str(p) for p in paths])


def replay_conversations(run_dir, tokenizer, per_language: int, max_tokens: int,
                         seed: int = 0) -> list[Conversation]:
    """Continuation conversations from the run's cleaned pretraining text: per language, `per_language` pairs of
    consecutive lines of one document (user: a line, assistant: the next line), drawn with `seed`.

    `run_dir` (a path or RunDir): reads its `data/text/train` (`vernacular.data.text.iter_records`; lines of a
    document are sentences or paragraphs). Pairs are sampled from the first max(20 x `per_language`, 10,000)
    candidate pairs of each language (files in name order), so a web-scale text folder is not read whole. Pairs
    whose chat rendering exceeds `max_tokens` are skipped. They are for training only (never held out, never in the
    language-confusion measurement). Why: mixing pretraining text into fine-tuning ("replay", as InstructGPT's
    PPO-ptx mixes pretraining gradients) keeps the base model's language modelling, and each pair is one more
    example, in its own language, of an assistant turn that continues in the language of the user's turn.
    Raises FileNotFoundError when the run has no cleaned training text."""
    from vernacular.data.text import iter_records, text_languages
    from vernacular.run import RunDir

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    langs = text_languages(run, "train")
    if not langs:
        raise FileNotFoundError(f"no cleaned training text in {run.text / 'train'} (run `vernacular data` first, or "
                                f"drop --replay)")
    out: list[Conversation] = []
    cap = max(20 * per_language, 10_000)
    for lang in langs:
        candidates: list[tuple[str, str, str]] = []
        for _, record in iter_records(run, "train", [lang]):
            lines = [x.strip() for x in record["text"].split("\n") if x.strip()]
            candidates += [(a, b, str(record.get("id"))) for a, b in zip(lines, lines[1:])]
            if len(candidates) >= cap:
                break
        rng = np.random.default_rng([seed, *lang.encode()])
        taken = 0
        for i in rng.permutation(len(candidates)):
            if taken == per_language:
                break
            user, assistant, source = candidates[i]
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            enc = encode_chat(tokenizer, messages, add_generation_prompt=False)
            if len(enc.ids) <= max_tokens:
                out.append(Conversation(messages, f"replay:{source}", to_iso639_3(lang) or lang, enc.ids,
                                        enc.assistant_mask))
                taken += 1
    return out


def conversation_tensors(c: Conversation) -> tuple[list[int], list[int], list[int]]:
    """(input ids, labels, position ids) of one conversation: inputs are its tokens but the last, labels the next
    token where that token is the assistant's (else IGNORE_INDEX), positions 0..n-2."""
    inputs = c.ids[:-1]
    labels = [t if m else IGNORE_INDEX for t, m in zip(c.ids[1:], c.assistant_mask[1:])]
    return inputs, labels, list(range(len(inputs)))


def pack(convs: list[Conversation], seq_len: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Lay conversations end to end, in order, into rows of exactly `seq_len` tokens (next-fit: a conversation that
    no longer fits starts a new row); the rest of a row is padding (PAD inputs, ignored labels, its own positions
    from 0 so it is a document of its own)."""
    rows: list[tuple[list[int], list[int], list[int]]] = []
    cur: tuple[list[int], list[int], list[int]] = ([], [], [])

    def close():
        n = seq_len - len(cur[0])
        if n:
            cur[0].extend([PAD_ID] * n)
            cur[1].extend([IGNORE_INDEX] * n)
            cur[2].extend(range(n))
        rows.append(cur)

    for c in convs:
        inputs, labels, positions = conversation_tensors(c)
        if len(inputs) > seq_len:
            raise ValueError(f"conversation {c.source} has {len(inputs)} input tokens > seq_len {seq_len}")
        if len(cur[0]) + len(inputs) > seq_len:
            close()
            cur = ([], [], [])
        cur[0].extend(inputs)
        cur[1].extend(labels)
        cur[2].extend(positions)
    if cur[0]:
        close()
    return rows


def _batch(rows: list[tuple[list[int], list[int], list[int]]]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([r[0] for r in rows], dtype=torch.long),
            "labels": torch.tensor([r[1] for r in rows], dtype=torch.long),
            "position_ids": torch.tensor([r[2] for r in rows], dtype=torch.long)}


class PackedLoader:
    """Endless packed batches of the training conversations, reshuffled each epoch with (seed, epoch).

    `next_batch()` -> {"input_ids", "labels", "position_ids"} each [batch_size, seq_len]. Rank r of W takes rows
    r, r+W, ... of every global batch of batch_size*W rows. The state is (epoch, rows consumed) - a pure function
    of the data, the seed and the step, so a resumed run sees the same batches as one that never stopped."""

    def __init__(self, convs: list[Conversation], batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if not convs:
            raise ValueError("no training conversations")
        self.convs, self.batch_size, self.seq_len = convs, batch_size, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.position = 0, 0
        self._rows: list | None = None

    def _epoch_rows(self) -> list:
        if self._rows is None:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.convs))
            self._rows = pack([self.convs[i] for i in order], self.seq_len)
        return self._rows

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows = []
        while len(rows) < self.batch_size * self.world_size:
            epoch_rows = self._epoch_rows()
            if self.position >= len(epoch_rows):
                self.epoch, self.position, self._rows = self.epoch + 1, 0, None
                continue
            rows.append(epoch_rows[self.position])
            self.position += 1
        return _batch(rows[self.rank:: self.world_size])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "rows_per_epoch": len(self._epoch_rows())}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._rows = int(state["epoch"]), int(state["position"]), None


def val_batches(convs: list[Conversation], batch_size: int, seq_len: int) -> list[dict[str, torch.Tensor]]:
    """The held-out conversations packed in a fixed order, in batches (the last one may be smaller)."""
    rows = pack(convs, seq_len)
    return [_batch(rows[i: i + batch_size]) for i in range(0, len(rows), batch_size)]
