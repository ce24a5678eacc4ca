"""Memory-mapped token loader over the shards of `vernacular.data.shards` (datatrove tokenized files).

The token stream of each file is cut into windows of T+1 tokens (documents run across windows, separated by their
BOS/EOS tokens, as in nanoGPT/nanochat). Training draws windows in a seeded permutation per epoch; rank r of W takes
positions r, r+W, r+2W, ... of it, so ranks never overlap. Validation reads one language's windows in order and ends.
The position is a few ints (`state_dict`), so a resumed run continues with exactly the batch it would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from vernacular.run import read_json


def _meta(tokens_dir: str | os.PathLike) -> dict:
    path = Path(tokens_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `vernacular data` with a tokenizer (or `vernacular tokenizer`)")
    return read_json(path)


def languages(tokens_dir: str | os.PathLike, split: str = "val") -> list[str]:
    """Languages with tokens in `split`, sorted."""
    return sorted(lang for lang, m in _meta(tokens_dir)["splits"].get(split, {}).items() if m["tokens"] > 0)


def bytes_per_token(tokens_dir: str | os.PathLike, split: str = "val") -> dict[str, dict]:
    """Per language: UTF-8 bytes of the text, tokens (BOS/EOS included) and their ratio, for bits-per-byte:
    bpb = (mean loss in nats per token) / ln(2) * tokens / bytes."""
    return {lang: {"bytes": m["bytes"], "tokens": m["tokens"], "bytes_per_token": m["bytes"] / m["tokens"]}
            for lang, m in _meta(tokens_dir)["splits"].get(split, {}).items() if m["tokens"] > 0}


class TokenLoader:
    def __init__(self, tokens_dir: str | os.PathLike, split: str = "train", batch_size: int = 8, seq_len: int = 1024,
                 rank: int = 0, world_size: int = 1, seed: int = 0, lang: str | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.tokens_dir, self.split, self.lang = Path(tokens_dir), split, lang
        self.batch_size, self.seq_len, self.rank, self.world_size, self.seed = batch_size, seq_len, rank, world_size, seed
        meta = _meta(tokens_dir)
        if meta.get("token_size") != 4:
            raise ValueError(f"{tokens_dir}: expected uint32 tokens (token_size 4), got {meta.get('token_size')}")
        available = languages(tokens_dir, split)
        if lang is not None and lang not in available:
            raise ValueError(f"no {split} tokens for language {lang!r}; available: {available}")
        self.langs = [lang] if lang is not None else available
        if not self.langs:
            raise ValueError(f"no {split} tokens in {tokens_dir}")
        self.files = [np.memmap(self.tokens_dir / split / f"{l}.ds", dtype="<u4", mode="r") for l in self.langs]
        window = seq_len + 1
        counts = np.array([len(f) // window for f in self.files], dtype=np.int64)
        self.file_starts = np.concatenate([[0], np.cumsum(counts)])  # global window id -> file
        self.n_windows = int(self.file_starts[-1])
        self.rank_windows = len(range(rank, self.n_windows, world_size))
        if self.rank_windows == 0:
            raise ValueError(f"{split}/{self.langs}: {self.n_windows} windows of {window} tokens; too few for "
                             f"rank {rank} of {world_size} (lower seq_len or add data)")
        self.epoch, self.position = 0, 0  # position: windows of this rank consumed in this epoch
        self._order = None

    # ------------------------------------------------------------------ ordering
    def _epoch_order(self) -> np.ndarray:
        if self._order is None or self._order[0] != self.epoch:
            ids = np.arange(self.n_windows)
            if self.split == "train":
                ids = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)
            self._order = (self.epoch, ids[self.rank::self.world_size])
        return self._order[1]

    def _window(self, wid: int) -> np.ndarray:
        f = int(np.searchsorted(self.file_starts, wid, side="right") - 1)
        start = (wid - int(self.file_starts[f])) * (self.seq_len + 1)
        return self.files[f][start:start + self.seq_len + 1]

    # ------------------------------------------------------------------ batches
    def next_batch(self) -> torch.LongTensor:
        """[B, T+1] token ids: inputs = batch[:, :-1], targets = batch[:, 1:]. Train wraps into a new epoch."""
        rows = []
        while len(rows) < self.batch_size:
            order = self._epoch_order()
            if self.position >= len(order):
                if self.split != "train":
                    raise StopIteration(f"{self.split} data exhausted; use iter_batches() for evaluation")
                self.epoch, self.position = self.epoch + 1, 0
                continue
            rows.append(self._window(int(order[self.position])))
            self.position += 1
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def iter_batches(self, max_batches: int | None = None) -> Iterator[torch.LongTensor]:
        """One pass over this rank's windows from the start, in order (the last batch may be smaller); ends."""
        order = np.arange(self.n_windows)[self.rank::self.world_size]
        n = 0
        for i in range(0, len(order), self.batch_size):
            if max_batches is not None and n >= max_batches:
                return
            yield torch.from_numpy(np.stack([self._window(int(w)) for w in order[i:i + self.batch_size]]).astype(np.int64))
            n += 1

    @property
    def epochs(self) -> float:
        """Passes over this rank's windows so far (1.0 = every training token read once; > 1: data repeated)."""
        return self.epoch + self.position / self.rank_windows

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "n_windows": self.n_windows}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "world_size", "n_windows"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]}, this loader {getattr(self, key)}: "
                                 "resume with the same data, seed and world size")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
