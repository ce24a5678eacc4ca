"""Checkpoints that survive kill -9: safetensors for tensors, JSON for everything else, atomic directory rename.

    checkpoints/
      step_000120/
        model.safetensors      full (unsharded) model state dict, HF-style parameter names
        optimizer.safetensors  flattened optimizer tensors ("state.<param fqn>.<key>")
        state.json             step, tokens, RNG states, data position, model_config, train config,
                               optimizer scalars/param groups, and the sha256 + size of both safetensors files
      latest                   name of the newest complete checkpoint (a convenience for other tools)

A checkpoint is written into `step_000120.tmp-<pid>/`, every file fsynced, then the directory is renamed: a crash
leaves either the old set of checkpoints or the new one, never a half-written `step_*`. Resume still verifies sizes,
checksums and loadability, because disks and copies corrupt files after the fact; a bad checkpoint is reported by name
and the previous good one is used. Nothing is ever unpickled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vernacular.run import atomic_write_bytes

STEP_DIR = re.compile(r"^step_(\d{6,})$")
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses aliased storage (tied embeddings): give every duplicate its own copy."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    return out


# ---- RNG states as JSON --------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch_cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    raw = np.frombuffer(base64.b64decode(state["torch_cpu"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda = [torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy()) for s in state["torch_cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---- save ----------------------------------------------------------------------------------------------------------

def save_checkpoint(root: Path, step: int, model_state: dict[str, torch.Tensor], optim_state: dict[str, Any],
                    state: dict[str, Any], keep_last: int | None = None, name: str | None = None) -> Path:
    """Write checkpoints/step_N atomically. `optim_state` is a full optimizer state dict keyed by parameter FQN
    (torch.distributed.checkpoint.state_dict.get_optimizer_state_dict); its tensors go flat into safetensors.
    `name`: another folder name than step_N (a model that training never resumes from: `find_resumable` and
    `keep_last` only look at step_* folders), still named by `latest`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / (name or step_dir_name(step))
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    optim_tensors, optim_scalars = flatten_optimizer_state(optim_state)
    save_file(_unshare(model_state), tmp / MODEL_FILE, metadata={"format": "pt"})
    save_file(_unshare(optim_tensors), tmp / OPTIM_FILE, metadata={"format": "pt"})
    files = {}
    for name in (MODEL_FILE, OPTIM_FILE):
        _fsync_file(tmp / name)
        files[name] = {"sha256": file_sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
    full_state = dict(state, step=step, files=files, optimizer_scalars=optim_scalars)
    with open(tmp / STATE_FILE, "w", encoding="utf-8") as f:
        json.dump(full_state, f, indent=1, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)

    if final.exists():  # re-saving a step after a resume: move the old one out of the way first
        stale = root / f"{final.name}.old-{os.getpid()}"
        os.rename(final, stale)
        shutil.rmtree(stale)
    os.rename(tmp, final)
    _fsync_dir(root)
    atomic_write_bytes(root / "latest", (final.name + "\n").encode())
    if keep_last:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_derived_checkpoint(source: Path, weights: dict[str, torch.Tensor], prefix: str, key: str,
                            record: dict[str, Any]) -> Path:
    """Weights derived from checkpoint `source` after training (WiSE-FT, language DPO), written next to it as
    `<prefix>-<source name>/` with `save_checkpoint` (same layout and checksums, no optimizer state) and named by
    `latest`, so serving and export take them. Its state.json is `source`'s (step, configs, ...) without the file list
    and optimizer scalars, plus `record` under `key`. Older `<prefix>-*` folders are removed first."""
    from vernacular.run import read_json

    source = Path(source)
    state = {k: v for k, v in read_json(source / STATE_FILE).items() if k not in ("files", "optimizer_scalars")}
    state[key] = record
    root = source.parent
    for old in root.glob(f"{prefix}-*"):
        shutil.rmtree(old, ignore_errors=True)
    return save_checkpoint(root, int(state["step"]), weights, {}, state, name=f"{prefix}-{source.name}")


def flatten_optimizer_state(optim_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """{"state": {fqn: {key: value}}, "param_groups": [...]} -> ({"state.<fqn>.<key>": tensor}, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": optim_state.get("param_groups", []), "state": {}}
    for fqn, entries in optim_state.get("state", {}).items():
        for key, value in entries.items():
            if "." in key:
                raise ValueError(f"optimizer state key {key!r} of {fqn} contains a '.'")
            if isinstance(value, torch.Tensor):
                tensors[f"state.{fqn}.{key}"] = value
            else:
                scalars["state"].setdefault(fqn, {})[key] = value
    return tensors, scalars


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {fqn: dict(v) for fqn, v in scalars.get("state", {}).items()}
    for name, value in tensors.items():
        fqn, key = name.removeprefix("state.").rsplit(".", 1)
        state.setdefault(fqn, {})[key] = value
    return {"state": state, "param_groups": scalars.get("param_groups", [])}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable in a checkpoint: {type(obj).__name__}")


def remove_stale_temporaries(root: Path) -> None:
    """Delete `step_*.tmp-*` left behind by a killed writer (call from the single writer, before training)."""
    for path in Path(root).glob("step_*.tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


# ---- find, verify, load --------------------------------------------------------------------------------------------

def list_checkpoints(root: Path) -> list[Path]:
    """Complete-looking `step_*` directories, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint with weights under `root`: the one `latest` names, else the highest `step_*`; None if
    there is none. Serving and export start from it; resuming uses `find_resumable`, which also verifies checksums."""
    root = Path(root)
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text(encoding="utf-8").strip()
        if (named / MODEL_FILE).is_file():
            return named
    complete = [p for p in list_checkpoints(root) if (p / MODEL_FILE).is_file()]
    return complete[-1] if complete else None


def latest_model_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint that holds a run's model, as serving and export take it: the newest chat fine-tuning checkpoint
    (`checkpoints/sft/`) if the run has one, else the newest pretraining checkpoint; None if there is neither."""
    from vernacular.run import RunDir

    run = RunDir(run_dir)
    return latest_checkpoint(run.sft_checkpoints) or latest_checkpoint(run.checkpoints)


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError naming the bad file unless sizes, sha256 and safetensors headers all check out."""
    path = Path(path)
    state_path = path / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path} is missing")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_path} is not valid JSON ({e})") from e
    for name in (MODEL_FILE, OPTIM_FILE):
        file = path / name
        expected = state.get("files", {}).get(name)
        if expected is None:
            raise CheckpointError(f"{state_path} records no checksum for {name}")
        if not file.is_file():
            raise CheckpointError(f"{file} is missing")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"{file} has {size} bytes, expected {expected['bytes']} (truncated?)")
        if file_sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{file} fails its sha256 check (corrupt)")
        try:
            with safe_open(file, framework="pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 - any parse failure means unusable
            raise CheckpointError(f"{file} cannot be read as safetensors ({e})") from e


def find_resumable(root: Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """Newest checkpoint that verifies; each unusable newer one is reported with its reason."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    bad: list[str] = []
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            bad.append(str(e))
            warn(f"warning: skipping checkpoint {path.name}: {e}")
            continue
        if bad:
            warn(f"warning: resuming from the previous good checkpoint {path}")
        return path
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model state, optimizer state dict keyed by FQN, state.json) of a verified checkpoint."""
    path = Path(path)
    verify_checkpoint(path)
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    model_state = load_file(path / MODEL_FILE)
    optim_state = unflatten_optimizer_state(load_file(path / OPTIM_FILE), state.pop("optimizer_scalars", {}))
    return model_state, optim_state, state
