import json
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from vernacular.train import checkpoint as ckpt
from vernacular.train.optim import OptimConfig, build_optimizers

OPTS = StateDictOptions(full_state_dict=True, cpu_offload=True)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(32, 16)
        self.proj = nn.Linear(16, 16, bias=False)
        self.experts = nn.Parameter(torch.randn(2, 16, 8) * 0.1)
        self.norm = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 32, bias=False)

    def forward(self, x):
        return self.lm_head(self.norm(self.proj(self.embed_tokens(x)) @ self.experts[0])).logsumexp(-1).mean()


def _trained(seed=0, steps=2):
    torch.manual_seed(seed)
    model = Tiny()
    opts = build_optimizers(model, OptimConfig())
    for _ in range(steps):
        model(torch.randint(0, 32, (4, 5))).backward()
        for o in opts:
            o.step()
            o.zero_grad()
    return model, opts


def _save(root, step, model, opts, keep_last=None):
    return ckpt.save_checkpoint(root, step, get_model_state_dict(model, options=OPTS),
                                get_optimizer_state_dict(model, opts, options=OPTS),
                                {"tokens": step * 10, "rng": ckpt.rng_state()}, keep_last=keep_last)


def test_roundtrip_restores_weights_and_optimizer_exactly(tmp_path):
    model, opts = _trained()
    path = _save(tmp_path, 2, model, opts)
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    assert (tmp_path / "latest").read_text().strip() == "step_000002"

    fresh, fresh_opts = _trained(seed=1, steps=1)
    model_sd, optim_sd, state = ckpt.load_checkpoint(path)
    set_model_state_dict(fresh, model_sd, options=OPTS)
    set_optimizer_state_dict(fresh, fresh_opts, optim_sd, options=OPTS)
    assert state["step"] == 2 and state["tokens"] == 20
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    # one more identical step on both gives identical weights: the optimizer state came back bit for bit
    x = torch.randint(0, 32, (4, 5), generator=torch.Generator().manual_seed(5))
    for m, os_ in ((model, opts), (fresh, fresh_opts)):
        m(x).backward()
        for o in os_:
            o.step()
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_rng_state_roundtrip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = json.loads(json.dumps(ckpt.rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_keep_last_and_stale_temporaries(tmp_path):
    model, opts = _trained()
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, model, opts, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000003", "step_000004"]
    (tmp_path / "step_000005.tmp-999").mkdir()
    (tmp_path / "step_000005.tmp-999" / "model.safetensors").write_bytes(b"half")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000003", "step_000004"]
    ckpt.remove_stale_temporaries(tmp_path)
    assert not (tmp_path / "step_000005.tmp-999").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_state"])
def test_corrupt_latest_falls_back_to_previous_good(tmp_path, damage):
    model, opts = _trained()
    _save(tmp_path, 2, model, opts)
    bad = _save(tmp_path, 4, model, opts)
    target = bad / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        (bad / "state.json").unlink()
    warnings = []
    found = ckpt.find_resumable(tmp_path, warn=warnings.append)
    assert found.name == "step_000002"
    assert "step_000004" in warnings[0]
    expected = {"truncate": "model.safetensors has", "flip": "sha256", "drop_state": "state.json is missing"}[damage]
    assert expected in warnings[0]
    assert "step_000002" in warnings[-1]
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(bad)


def test_no_checkpoint_at_all(tmp_path):
    assert ckpt.find_resumable(tmp_path / "none") is None
