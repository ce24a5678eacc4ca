"""Expert parallelism on 2 and 4 CPU processes (gloo): the same loss, gradients, expert loads, bias updates and Muon
step as one process on the same global batch; an all-to-one-rank router neither deadlocks nor drops tokens; full
checkpoints move between EP=N and EP=1 bit for bit; and `vernacular pretrain --expert-parallel 2` under torchrun."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from test_train_support import TINY, cli_command, make_run, subprocess_env

CONFIG = {**TINY, "n_routed_experts": 8, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2}
BATCH, SEQ = 4, 16  # BATCH sequences of SEQ tokens per rank (2 micro-batches of 2); the reference gets all ranks' at once


def _global_batch(world: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, CONFIG["vocab_size"], (BATCH * world, SEQ + 1), generator=g)


def _reference(batch: torch.Tensor, bias: torch.Tensor | None):
    """One process, the whole batch: loss, grads, expert counts, bias after the update, params after a Muon step."""
    from vernacular.model import build_model
    from vernacular.train.optim import OptimConfig, build_optimizers

    model = build_model(CONFIG, seed=0)
    model.train()
    if bias is not None:
        for _, moe in model.moe_layers():
            moe.gate.e_score_correction_bias.copy_(bias)
    out = model(batch[:, :-1], labels=batch[:, 1:])
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    counts = {n: moe.expert_counts.clone() for n, moe in model.moe_layers()}
    model.update_expert_bias()
    biases = {n: moe.gate.e_score_correction_bias.clone() for n, moe in model.moe_layers()}
    for opt in build_optimizers(model, OptimConfig(lr=1e-2)):
        opt.step()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return float(out.loss.detach()), grads, float(norm), counts, biases, params


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _ep_step(ep: int, world: int, rank: int, batch: torch.Tensor, bias: torch.Tensor | None):
    """The trainer's step with `ep`-way expert parallelism: 2 micro-batches (gradient accumulation), clip, bias, Muon."""
    from vernacular.model import build_model
    from vernacular.train.distributed import DistInfo, wrap_model
    from vernacular.train.expert_parallel import clip_grad_norm_
    from vernacular.train.optim import OptimConfig, build_optimizers
    from vernacular.train.trainer import _grad_sync, _sync_expert_counts

    info = DistInfo(rank=rank, world_size=world)
    model = build_model(CONFIG, seed=0)
    model.train()
    if bias is not None:
        for _, moe in model.moe_layers():
            moe.gate.e_score_correction_bias.copy_(bias)
    model = wrap_model(model, "fsdp", info, expert_parallel=ep)
    local = batch[rank * BATCH: (rank + 1) * BATCH]
    loss_sum = 0.0
    for micro in range(2):
        part = local[micro * BATCH // 2: (micro + 1) * BATCH // 2]
        with _grad_sync(model, micro == 1, info):
            out = model(part[:, :-1], labels=part[:, 1:])
            (out.loss / 2).backward()
        loss_sum += float(out.loss.detach()) / 2
    loss = torch.tensor([loss_sum])
    torch.distributed.all_reduce(loss)
    grads = {n: _full(p.grad).clone() for n, p in model.named_parameters()}
    norm = float(_full(clip_grad_norm_(model.parameters(), 1.0)))
    _sync_expert_counts(model, info)
    counts = {n: moe.expert_counts.clone() for n, moe in model.moe_layers()}
    model.update_expert_bias()
    biases = {n: moe.gate.e_score_correction_bias.clone() for n, moe in model.moe_layers()}
    optimizers = build_optimizers(model, OptimConfig(lr=1e-2))
    for opt in optimizers:
        opt.step()
    params = {n: _full(p.detach()).clone() for n, p in model.named_parameters()}
    return float(loss) / world, grads, norm, counts, biases, params, model, optimizers


def _check_equal_to_reference(ep: int, world: int, rank: int, bias: torch.Tensor | None) -> None:
    batch = _global_batch(world)
    ref_loss, ref_grads, ref_norm, ref_counts, ref_biases, ref_params = _reference(batch, bias)
    loss, grads, norm, counts, biases, params, _, _ = _ep_step(ep, world, rank, batch, bias)
    where = f"EP={ep} of {world} ranks, rank {rank}, bias={'skewed' if bias is not None else 'zero'}"
    assert loss == pytest.approx(ref_loss, rel=1e-5), where
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{where} grad {name}: {m}")
    assert norm == pytest.approx(ref_norm, rel=1e-5), where
    for name, c in counts.items():
        assert torch.equal(c, ref_counts[name]), f"{where}: expert load of {name} {c} != {ref_counts[name]}"
        if name.startswith("model.layers"):  # (MTP layers see fewer positions)
            assert c.sum() == batch[:, :-1].numel() * CONFIG["num_experts_per_tok"], "a token was dropped"
        assert torch.equal(biases[name], ref_biases[name]), where
    for name, p in params.items():
        torch.testing.assert_close(p, ref_params[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{where} {name}: {m}")


def _check_checkpoint_roundtrip(ep: int, world: int, rank: int, root: Path) -> None:
    """The trainer's checkpoint path (full state dicts gathered to rank 0, safetensors files read back by every rank):
    an EP checkpoint loaded into an EP=1 (FSDP) run and into an EP run again saves the same files, bit for bit."""
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    from vernacular.model import build_model
    from vernacular.train import checkpoint as ckpt
    from vernacular.train.distributed import DistInfo, wrap_model
    from vernacular.train.optim import OptimConfig, build_optimizers
    from vernacular.train.trainer import _state_dict_options

    options = _state_dict_options()
    info = DistInfo(rank=rank, world_size=world)

    def save(model, optimizers, name: str) -> Path:
        model_state = get_model_state_dict(model, options=options)
        optim_state = get_optimizer_state_dict(model, optimizers, options=options)
        if rank == 0:
            ckpt.save_checkpoint(root / name, 1, model_state, optim_state, {})
        torch.distributed.barrier()
        return root / name / ckpt.step_dir_name(1)

    *_, model, optimizers = _ep_step(ep, world, rank, _global_batch(world), None)
    first = save(model, optimizers, f"ep{ep}")
    for target_ep in (1, ep):
        model_sd, optim_sd, _ = ckpt.load_checkpoint(first)  # (loading consumes the dicts)
        other = wrap_model(build_model(CONFIG, seed=7), "fsdp", info, expert_parallel=target_ep)
        other_optims = build_optimizers(other, OptimConfig(lr=1e-2))
        set_model_state_dict(other, model_sd, options=options)
        set_optimizer_state_dict(other, other_optims, optim_sd, options=options)
        again = save(other, other_optims, f"ep{ep}-to-ep{target_ep}")
        for name in (ckpt.MODEL_FILE, ckpt.OPTIM_FILE):
            assert (again / name).read_bytes() == (first / name).read_bytes(), f"EP={ep} -> EP={target_ep}: {name}"


def _worker(rank: int, world: int, eps: list[int], tmp: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        skewed = torch.zeros(CONFIG["n_routed_experts"])
        skewed[: CONFIG["num_experts_per_tok"]] = 100.0  # every token picks experts 0 and 1: all on EP rank 0
        for ep in eps:
            _check_equal_to_reference(ep, world, rank, None)
            _check_equal_to_reference(ep, world, rank, skewed)
            _check_checkpoint_roundtrip(ep, world, rank, Path(tmp) / f"ckpt-{world}")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("world, eps", [(2, [2]), (4, [2, 4])])
def test_expert_parallel_matches_one_process(tmp_path, world, eps):
    mp.spawn(_worker, args=(world, eps, str(tmp_path)), nprocs=world, join=True)


# ---- the CLI under torchrun -----------------------------------------------------------------------------------------

CLI_ARGS = ["--seq-len", "32", "--eval-batches", "1", "--warmup", "2", "--no-progress", "--grad-accum", "2"]


def _pretrain(run: Path, nproc: int, *extra: str) -> list[float]:
    cmd = cli_command("pretrain", "--run-dir", str(run), "--config", str(run / "model.json"), *CLI_ARGS, *extra)
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--no-python", *cmd]
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = (run / "metrics" / "train.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_torchrun_pretrain_expert_parallel_2_of_4_matches_one_process_and_exports(tmp_path):
    """`torchrun --nproc_per_node 4 -m vernacular pretrain --expert-parallel 2` (2 EP groups x 2 data-parallel
    replicas of each expert shard, gradient accumulation 2) gives one process's losses on the same global batch; its
    checkpoint resumes on one process and exports to a folder transformers loads with the same logits."""
    from test_interop_hf import cli as interop_cli, theirs

    from vernacular.interop.hf import load_checkpoint

    template = make_run(tmp_path / "template")
    (template / "model.json").write_text(json.dumps(CONFIG))
    single, ep = tmp_path / "single", tmp_path / "ep"
    shutil.copytree(template, single)
    shutil.copytree(template, ep)
    reference = _pretrain(single, 1, "--steps", "3", "--batch-size", "4")
    losses = _pretrain(ep, 4, "--steps", "3", "--batch-size", "1", "--expert-parallel", "2")
    assert len(losses) == 3 and losses == pytest.approx(reference, rel=1e-4)
    state = json.loads((ep / "checkpoints" / "step_000003" / "state.json").read_text())
    assert state["train_config"]["expert_parallel"] == 2 and state["world_size"] == 4

    resumed = _pretrain(ep, 1, "--steps", "4", "--batch-size", "4", "--resume")
    assert len(resumed) == 4 and resumed[:3] == losses and resumed[3] == resumed[3]

    assert interop_cli(["export", "hf", "--run-dir", str(ep), "--out", str(tmp_path / "hf")]) == 0
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = load_checkpoint(ep / "checkpoints" / "step_000004")(ids).logits
    assert (theirs(tmp_path / "hf", ids) - ours).abs().max().item() < 1e-4
