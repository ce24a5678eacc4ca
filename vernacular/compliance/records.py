"""Everything the AI Act documents state, read from the run's own records (never typed in by hand).

Sources: `run.toml` (each stage's resolved configuration), `data/manifest.json` (sources, licences, collection
dates, removals by reason), the token shards (token counts), `tokenizer/`, the newest pretraining and SFT checkpoints
(`state.json`: model config, steps, tokens, wall-clock), `metrics/energy_<stage>.json` (codecarbon), and evaluation
results when `vernacular eval` ran. FLOPs come from `vernacular.model.info`, the one accounting module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vernacular.run import RunDir, read_json

# Public datasets we know by name: substring of the source name/location -> identifier, description, address
KNOWN_DATASETS: tuple[tuple[str, dict[str, str]], ...] = (
    ("ntrex", {"identifier": "NTREX-128 (Federmann, Kocmi & Xin 2022)",
               "content": "news articles (WMT19 newstest2019, professionally translated)",
               "url": "https://github.com/MicrosoftTranslator/NTREX"}),
    ("fineweb-2", {"identifier": "HuggingFaceFW/fineweb-2", "content": "web pages (Common Crawl, filtered)",
                   "url": "https://huggingface.co/datasets/HuggingFaceFW/fineweb-2"}),
    ("fineweb", {"identifier": "HuggingFaceFW/fineweb", "content": "web pages (Common Crawl, filtered)",
                 "url": "https://huggingface.co/datasets/HuggingFaceFW/fineweb"}),
    ("hplt", {"identifier": "HPLT", "content": "web pages (Internet Archive and Common Crawl)",
              "url": "https://hplt-project.org/datasets"}),
    ("wikipedia", {"identifier": "Wikipedia", "content": "encyclopaedia articles", "url": "https://dumps.wikimedia.org"}),
    ("tatoeba", {"identifier": "Tatoeba", "content": "example sentences", "url": "https://tatoeba.org"}),
    ("europarl", {"identifier": "Europarl", "content": "parliamentary proceedings", "url": "https://www.statmt.org/europarl/"}),
)


def known_dataset(name: str, location: str) -> dict[str, str] | None:
    key = f"{name} {location}".lower()
    for needle, info in KNOWN_DATASETS:
        if needle in key:
            return info
    return None


def shard_tokens(run: RunDir) -> dict[str, dict[str, int]]:
    """Tokens per split and language, counted from the shard files themselves (uint32 ids: bytes / 4)."""
    out: dict[str, dict[str, int]] = {}
    for split in ("train", "val"):
        folder = run.tokens / split
        if folder.is_dir():
            out[split] = {p.name[: -len(".ds")]: p.stat().st_size // 4 for p in sorted(folder.glob("*.ds"))}
    return out


def _latest_state(root: Path) -> dict[str, Any] | None:
    from vernacular.train.checkpoint import STATE_FILE, latest_checkpoint

    if not root.is_dir():
        return None
    path = latest_checkpoint(root)
    if path is None:
        return None
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    return {k: state.get(k) for k in ("step", "tokens", "elapsed_s", "world_size", "model_config", "train_config",
                                      "grad_accum", "wise_ft", "language_dpo")} | {"path": str(path)}


@dataclass
class RunRecords:
    run: RunDir
    config: dict[str, Any] = field(default_factory=dict)  # run.toml
    manifest: dict[str, Any] | None = None
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    tokenizer: dict[str, Any] | None = None
    pretrain: dict[str, Any] | None = None  # newest pretraining checkpoint state
    sft: dict[str, Any] | None = None  # newest SFT checkpoint state
    energy: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> energy record
    evaluation: dict[str, Any] | None = None

    @property
    def base_model(self) -> str | None:
        """The model SFT started from when it is not this run's own pretraining (`vernacular sft --init-from`)."""
        init = (self.config.get("sft") or {}).get("init_from")
        if not init:
            return None
        try:
            Path(init).resolve().relative_to(self.run.checkpoints.resolve())
            return None  # this run's own pretraining checkpoint
        except ValueError:
            return init

    @property
    def model_config(self):
        from vernacular.model.config import ModelConfig

        state = self.sft or self.pretrain
        return ModelConfig.from_dict(state["model_config"]) if state and state.get("model_config") else None


def collect(run_dir: str | Path) -> RunRecords:
    """Read every record of a run directory; missing stages are None (the documents say what is missing)."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"run directory {run.root} does not exist")
    rec = RunRecords(run=run, config=run.read_config())
    if run.manifest.is_file():
        rec.manifest = read_json(run.manifest)
    rec.tokens = shard_tokens(run)
    stats = run.tokenizer / "train_stats.json"
    if stats.is_file():
        rec.tokenizer = read_json(stats)
    rec.pretrain = _latest_state(run.checkpoints)
    rec.sft = _latest_state(run.sft_checkpoints)
    for stage in ("pretrain", "sft"):
        path = run.energy_record(stage)
        if path.is_file():
            rec.energy[stage] = read_json(path)
    if run.eval_results.is_file():
        rec.evaluation = read_json(run.eval_results)
    return rec
