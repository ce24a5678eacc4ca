"""Finding and loading what the server serves: a checkpoint's weights and the run's tokenizer.

Three layouts are accepted, because a model reaches the server by three roads: a run directory (its newest chat
fine-tuning checkpoint `checkpoints/sft/step_*` if it has one, else the latest `checkpoints/step_*`), a trainer checkpoint folder (`model.safetensors` +
`state.json` with the config under "model_config" and sha256 checksums), and a folder written by `vernacular import`
(`model.safetensors` + `config.json` holding our ModelConfig). A transformers DeepseekV3 folder (config.json with
model_type "deepseek_v3") goes through the interop importer. Every failure names the file and what is wrong with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vernacular.run import RunDir
from vernacular.train import checkpoint as train_checkpoint
from vernacular.train.checkpoint import CheckpointError, file_sha256



def _is_checkpoint(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() and (
        (folder / "state.json").exists() or (folder / "config.json").exists()
    )


def latest_checkpoint(run_dir: Path) -> Path:
    """The run's model: its newest chat fine-tuning checkpoint if any, else its newest pretraining checkpoint
    (`train.checkpoint.latest_model_checkpoint`)."""
    ckpts = RunDir(run_dir).checkpoints
    found = train_checkpoint.latest_model_checkpoint(run_dir)
    if found is None:
        raise CheckpointError(
            f"no checkpoint in {ckpts}: train one with `vernacular pretrain --run-dir {run_dir}` "
            f"(or import one with `vernacular import hf PATH --run-dir {run_dir}`)"
        )
    return found


def resolve_checkpoint(run_dir: str | Path | None, checkpoint: str | Path | None = None) -> Path:
    """Turn `--run-dir` / `--checkpoint` into one checkpoint folder.

    `checkpoint` may be a path, a step folder name (`step_000100`) or a step number, the latter two inside the run."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_dir():
            return path
        if run_dir is not None:
            ckpts = RunDir(run_dir).checkpoints
            name = f"step_{int(checkpoint):06d}" if str(checkpoint).isdigit() else str(checkpoint)
            if (ckpts / name).is_dir():
                return ckpts / name
        raise CheckpointError(f"checkpoint {checkpoint} not found (neither a folder nor a step of {run_dir})")
    if run_dir is None:
        raise CheckpointError("give a run directory or a checkpoint folder")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if _is_checkpoint(run_dir):  # a bare checkpoint / import / HF folder passed as --run-dir
        return run_dir
    return latest_checkpoint(run_dir)


def find_tokenizer_dir(checkpoint: Path, run_dir: str | Path | None = None) -> Path:
    """The tokenizer that belongs to a checkpoint: the run's tokenizer/, else tokenizer.json next to the weights."""
    candidates = []
    if run_dir is not None:
        candidates.append(RunDir(run_dir).tokenizer)
    # run/checkpoints/step_N and run/checkpoints/sft/step_N -> run/tokenizer
    candidates += [checkpoint, checkpoint.parent.parent / "tokenizer", checkpoint.parent.parent.parent / "tokenizer"]
    for c in candidates:
        if (c / "tokenizer.json").exists():
            return c
    raise CheckpointError(
        "no tokenizer.json found in " + ", ".join(str(c) for c in candidates)
        + ": train one with `vernacular tokenizer --run-dir DIR`"
    )


def read_model_config(checkpoint: Path) -> tuple[dict[str, Any], str]:
    """(config dict, layout) where layout is "vernacular" or "hf"."""
    state_path, config_path = checkpoint / "state.json", checkpoint / "config.json"
    try:
        if state_path.exists():
            state = json.loads(state_path.read_text(encoding="utf-8"))
            if "model_config" not in state:
                raise CheckpointError(f"{state_path} has no 'model_config' entry")
            return state["model_config"], "vernacular"
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{state_path if state_path.exists() else config_path} is not valid JSON: {e}") from None
    from vernacular.interop.hf import is_deepseek_v3

    if is_deepseek_v3(config):
        return config, "hf"
    return config.get("model_config", config), "vernacular"


def load_model_for_serving(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Path]:
    """Load the model of a run directory or checkpoint folder for inference. Returns (model in eval mode, folder)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vernacular.model import ModelConfig, build_model

    checkpoint = resolve_checkpoint(path)
    config, layout = read_model_config(checkpoint)
    if layout == "hf":
        from vernacular.interop.hf import import_hf

        model = import_hf(checkpoint)
    else:
        weights = checkpoint / "model.safetensors"
        if (checkpoint / "state.json").exists():
            recorded = json.loads((checkpoint / "state.json").read_text()).get("files", {}).get("model.safetensors", {})
            expected = recorded.get("sha256")  # what the trainer's save_checkpoint records
            if expected is not None and file_sha256(weights) != expected:
                raise CheckpointError(f"{weights} is corrupt: its sha256 does not match the one in state.json")
        try:
            cfg = ModelConfig.from_dict(config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"invalid model config in {checkpoint}: {e}") from None
        try:
            state_dict = load_file(str(weights))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {weights} (truncated or not a safetensors file?): {e}") from None
        model = build_model(cfg, seed=0, dtype=dtype, device=device)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{weights} does not match the model config in {checkpoint}:\n{e}") from None
        return model.eval(), checkpoint
    return model.to(device=device, dtype=dtype).eval(), checkpoint
