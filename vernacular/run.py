"""The run directory: the spine every stage reads from and writes to.

    runs/<name>/
      run.toml          resolved configuration of every stage that ran (one table per stage)
      data/             manifest.json, rejects/, text/, tokens/{train,val}/
      tokenizer/        tokenizer.json, tokenizer_config.json, parity.json, parity.png
      checkpoints/      step_000123/{model.safetensors, optimizer.safetensors, state.json}
        sft/            the chat fine-tuning stage's own step_*/ checkpoints (same layout)
      sft/              data.json (conversations read, kept, split, rejected by reason), rejects.jsonl
      metrics/          train.jsonl (one line per step), val.jsonl (one line per validation pass), val.json (final),
                        eval.json (stage `eval`: lm-eval results and the aggregate)
      report/           report.md and its plots
      export/hf/        a transformers-loadable folder

Stages never talk to each other directly: they only read and write here, so each can be rerun, resumed, inspected or
moved to another machine on its own.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _toml_safe(obj: Any) -> Any:
    """TOML has no null and no Path: drop Nones, stringify paths, recurse."""
    if isinstance(obj, dict):
        return {str(k): _toml_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_toml_safe(v) for v in obj if v is not None]
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    # data stage
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.json"

    @property
    def rejects(self) -> Path:
        return self.data / "rejects"

    @property
    def text(self) -> Path:
        return self.data / "text"

    @property
    def tokens(self) -> Path:
        return self.data / "tokens"

    # later stages
    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def sft_checkpoints(self) -> Path:
        return self.checkpoints / "sft"

    @property
    def sft(self) -> Path:
        return self.root / "sft"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def eval_results(self) -> Path:
        """Stage `eval`: per-task scores, the aggregate and lm-eval's own results (metrics/eval.json)."""
        return self.metrics / "eval.json"

    @property
    def train_metrics(self) -> Path:
        """metrics/train.jsonl: one JSON object per optimizer step (losses, LR, throughput, data epochs)."""
        return self.metrics / "train.jsonl"

    @property
    def val_metrics(self) -> Path:
        """metrics/val.jsonl: one JSON object per validation pass (step, tokens, epochs, train loss, per-language bpb)."""
        return self.metrics / "val.jsonl"

    @property
    def val_final(self) -> Path:
        """metrics/val.json: the final result of pretraining (last step, final per-language validation bpb)."""
        return self.metrics / "val.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def energy_record(self, stage: str) -> Path:
        """Energy and hardware of one training stage, measured with codecarbon (vernacular/compliance/energy.py)."""
        return self.metrics / f"energy_{stage}.json"

    # AI Act documents (vernacular compliance)
    @property
    def training_content_summary(self) -> Path:
        """Public summary of training content (Art. 53(1)(d)), `.md` and `.json` with the same stem."""
        return self.report / "training_content_summary"

    @property
    def technical_documentation(self) -> Path:
        """Annex XI technical documentation, `.md` and `.json`."""
        return self.report / "annex_xi_technical_documentation"

    @property
    def copyright_policy(self) -> Path:
        return self.report / "copyright_policy.md"

    @property
    def run_toml(self) -> Path:
        return self.root / "run.toml"

    def create(self) -> "RunDir":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def read_config(self) -> dict[str, Any]:
        """The resolved configuration of every stage that ran so far ({} for a new run)."""
        if not self.run_toml.exists():
            return {}
        return tomllib.loads(self.run_toml.read_text(encoding="utf-8"))

    def record_stage(self, stage: str, config: dict[str, Any]) -> None:
        """Store the resolved configuration of one stage in run.toml (replacing that stage's previous table)."""
        self.create()
        resolved = self.read_config()
        resolved[stage] = _toml_safe(config)
        atomic_write_bytes(self.run_toml, tomli_w.dumps(resolved).encode())

    def require(self, path: Path, stage: str) -> Path:
        """Fail with a message that names the stage to run first, instead of a bare FileNotFoundError."""
        if not Path(path).exists():
            raise SystemExit(
                f"error: {path} not found in run directory {self.root}. Run `vernacular {stage} --run-dir {self.root}` first."
            )
        return Path(path)
