"""Forward and inverse training plans, and the search for parallel layouts that fit.

Forward: model + tokens + accelerator + count + MFU -> training FLOPs, GPU-hours, wall clock, cost, energy, CO2.
Inverse: a budget (GPU-hours, euros or MWh) + accelerator + MFU -> compute -> compute-optimal model and tokens.
Every FLOP and byte comes from `vernacular.model.info`; the formulas are stated in the returned dicts' `notes`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from vernacular.model.config import ModelConfig
from vernacular.model.info import (
    ArchSpec,
    Layout,
    arch_spec,
    communication_bytes,
    dense_arch_spec,
    spec_flops_per_token,
    training_memory,
)
from vernacular.plan.hardware import ASSUMED_MFU, MEASURED_MFU, Accelerator
from vernacular.plan.scaling import config_for_flops, non_embedding_flops_per_token, optimal_allocation

GATED_MLP_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo", "olmo2",
                   "phi3", "granite", "cohere", "stablelm", "internlm2", "yi", "deepseek"}
MEMORY_HEADROOM = 0.90  # plan to use at most 90% of device memory (allocator fragmentation, NCCL buffers)


def load_model(spec: str) -> tuple[ArchSpec, ModelConfig | None, list[str]]:
    """A preset name, a .toml/.json of ours, or a transformers `config.json` / model folder.

    DeepseekV3ForCausalLM configs (DeepSeek-V3, Kimi K2, Moonlight) become our ModelConfig through the import mapping;
    dense Llama-family configs (Apertus, Llama, Qwen, Mistral...) become a dense ArchSpec for accounting only.
    Returns (spec, config or None, notes)."""
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" and path.is_file():
        hf = json.loads(path.read_text(encoding="utf-8"))
        if ("architectures" in hf or "model_type" in hf) and "DeepseekV3ForCausalLM" not in (hf.get("architectures") or []) \
                and hf.get("model_type") not in ("deepseek_v3", "kimi_k2"):
            return _dense_from_hf(hf, _name(path))
        if "architectures" in hf or "model_type" in hf:
            config, ignored = ModelConfig.from_hf(hf)
            notes = [f"read {path} through the `vernacular import hf` mapping"]
            if ignored:
                notes.append("ignored (do not change the architecture): " + ", ".join(ignored))
            s = arch_spec(config)
            s.name = hf.get("_name_or_path") or _name(path)
            return s, config, notes
    config = ModelConfig.load(spec)
    s = arch_spec(config)
    s.name = str(spec)
    return s, config, []


def _name(path: Path) -> str:
    return path.parent.name if path.name == "config.json" else path.stem


def _dense_from_hf(hf: dict, name: str) -> tuple[ArchSpec, None, list[str]]:
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in needed if k not in hf]
    if missing:
        raise ValueError(f"config.json lacks {missing}: cannot account for model_type {hf.get('model_type')!r}")
    if hf.get("num_local_experts") or hf.get("num_experts"):
        raise ValueError(f"model_type {hf.get('model_type')!r} is a mixture of experts the planner cannot read yet; "
                         "give a DeepseekV3ForCausalLM config or one of our presets")
    mtype = str(hf.get("model_type", "")).lower()
    act = str(hf.get("hidden_act", "silu")).lower()
    gated = mtype in GATED_MLP_TYPES or (act in ("silu", "swish") and mtype not in ("apertus", "gpt2", "gpt_neox"))
    spec = dense_arch_spec(
        name=hf.get("_name_or_path") or name, hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"], vocab_size=hf["vocab_size"],
        num_kv_heads=hf.get("num_key_value_heads"), head_dim=hf.get("head_dim"), gated_mlp=gated,
        tied=bool(hf.get("tie_word_embeddings", False)),
    )
    notes = [f"dense {mtype or 'transformer'}: {'gated (3-matrix)' if gated else '2-matrix'} MLP "
             f"({act}), {hf.get('num_key_value_heads') or hf['num_attention_heads']} KV heads; accounting only"]
    return spec, None, notes


def default_mfu(hw: Accelerator) -> tuple[float, str]:
    if hw.name in MEASURED_MFU:
        mfu, where = MEASURED_MFU[hw.name]
        return mfu, f"measured on {hw.name} ({where})"
    return ASSUMED_MFU, f"an assumption: no Vernacular measurement on {hw.name} in BENCHMARKS.md yet"


def costs(gpu_hours: float, hw: Accelerator, price_per_gpu_hour: float | None, pue: float,
          grid_g_per_kwh: float) -> dict:
    """Money, energy (GPU power x hours x PUE) and CO2 (energy x grid intensity) of `gpu_hours`."""
    energy_kwh = gpu_hours * hw.power_w / 1000 * pue
    return {
        "cost": None if price_per_gpu_hour is None else gpu_hours * price_per_gpu_hour,
        "energy_mwh": energy_kwh / 1000,
        "co2_tonnes": energy_kwh * grid_g_per_kwh / 1e6,
    }


def forward_plan(spec: ArchSpec, tokens: float, hw: Accelerator, count: int, mfu: float | None = None,
                 seq_len: int = 4096, dtype: str = "bf16", price_per_gpu_hour: float | None = None, pue: float = 1.2,
                 grid_g_per_kwh: float = 250.0, include_mtp: bool = True) -> dict:
    """Training FLOPs, GPU-hours, wall clock, cost, energy and CO2 of training `spec` on `tokens` tokens.

    FLOPs = tokens x `spec_flops_per_token` (6 N_active + lm_head + 6 L H (d_qk + d_v) T, + MTP). GPU-hours =
    FLOPs / (peak x MFU) / 3600. Energy = GPU-hours x `hw.power_w` x PUE. Raises ValueError on non-positive inputs."""
    if tokens <= 0 or count <= 0:
        raise ValueError("tokens and GPU count must be positive")
    mfu_note = "given"
    if mfu is None:
        mfu, mfu_note = default_mfu(hw)
    if not 0 < mfu <= 1:
        raise ValueError(f"MFU must be in (0, 1], got {mfu}")
    fpt = spec_flops_per_token(spec, seq_len, include_mtp)
    flops = fpt * tokens
    gpu_hours = flops / (hw.peak_flops(dtype) * mfu) / 3600
    return {
        "model": spec.name, "total_params": spec.total, "active_params": spec.active, "tokens": tokens,
        "seq_len": seq_len, "flops_per_token": fpt, "training_flops": flops, "accelerator": hw.name, "count": count,
        "dtype": dtype, "peak_flops": hw.peak_flops(dtype), "mfu": mfu, "mfu_source": mfu_note, "gpu_hours": gpu_hours,
        "wall_clock_days": gpu_hours / count / 24, "pue": pue, "grid_g_per_kwh": grid_g_per_kwh,
        "price_per_gpu_hour": price_per_gpu_hour, "power_w": hw.power_w,
        **costs(gpu_hours, hw, price_per_gpu_hour, pue, grid_g_per_kwh),
    }


def budget_to_gpu_hours(hw: Accelerator, gpu_hours: float | None = None, euros: float | None = None,
                        mwh: float | None = None, price_per_gpu_hour: float | None = None, pue: float = 1.2) -> float:
    given = [x is not None for x in (gpu_hours, euros, mwh)]
    if sum(given) != 1:
        raise ValueError("give exactly one budget: --gpu-hours, --euros or --mwh")
    if gpu_hours is not None:
        return gpu_hours
    if euros is not None:
        if not price_per_gpu_hour:
            raise ValueError("a budget in euros needs --price (euros per GPU-hour)")
        return euros / price_per_gpu_hour
    return mwh * 1000 / (hw.power_w / 1000 * pue)


def inverse_plan(gpu_hours: float, hw: Accelerator, mfu: float | None = None, seq_len: int = 4096,
                 law: str = "deepseek", tokens_per_param: float | None = None, dtype: str = "bf16",
                 presets: list[str] | None = None) -> dict:
    """Compute-optimal active size and tokens for a budget of `gpu_hours`, with the nearest preset and a generated
    config with DeepSeek-V3's proportions (see vernacular.plan.scaling for the law and the MoE adjustment)."""
    if gpu_hours <= 0:
        raise ValueError("the budget must be positive")
    mfu_note = "given"
    if mfu is None:
        mfu, mfu_note = default_mfu(hw)
    compute = gpu_hours * 3600 * hw.peak_flops(dtype) * mfu
    alloc = optimal_allocation(compute, law, tokens_per_param, seq_len)
    generated = config_for_flops(alloc["M"], seq_len)
    nearest, nearest_err = None, float("inf")
    for name in presets if presets is not None else ModelConfig.presets():
        cfg = ModelConfig.load(name)
        err = abs(math.log(non_embedding_flops_per_token(cfg, seq_len) / alloc["M"]))
        if err < nearest_err:
            nearest, nearest_err = name, err
    gen_spec = arch_spec(generated)
    gen_m = non_embedding_flops_per_token(generated, seq_len)
    return {
        "budget_gpu_hours": gpu_hours, "accelerator": hw.name, "mfu": mfu, "mfu_source": mfu_note,
        "compute_flops": compute, "law": alloc["law"], "optimal_flops_per_token": alloc["M"],
        "optimal_tokens": alloc["D"], "optimal_active_params_approx": alloc["M"] / 6,
        "nearest_preset": nearest, "nearest_preset_ratio": math.exp(nearest_err),
        "generated_config": generated.to_dict(), "generated_total_params": gen_spec.total,
        "generated_active_params": gen_spec.active, "generated_tokens": compute / spec_flops_per_token(gen_spec, seq_len),
        "generated_flops_per_token_non_embedding": gen_m,
    }


def _powers_of_two(limit: int) -> list[int]:
    out, x = [], 1
    while x <= limit:
        out.append(x)
        x *= 2
    return out


def layouts_for(spec: ArchSpec, world: int, gpus_per_node: int, global_batch_tokens: int, seq_len: int) -> list[Layout]:
    """Every dp x ep x pp x tp = world with tp inside a node, >= 2 layers per stage, ep | dp and ep | experts, and at least one
    sequence per data-parallel rank."""
    out = []
    for tp in _powers_of_two(min(gpus_per_node, spec.num_heads)):
        for pp in _powers_of_two(max(1, spec.num_layers // 2)):  # at least two layers per pipeline stage
            if world % (tp * pp):
                continue
            dp = world // (tp * pp)
            if dp * seq_len > global_batch_tokens:
                continue
            eps = [1] if not spec.n_routed_experts else [e for e in _powers_of_two(min(dp, spec.n_routed_experts))
                                                         if dp % e == 0 and spec.n_routed_experts % e == 0]
            out += [Layout(dp=dp, ep=ep, pp=pp, tp=tp) for ep in eps]
    return out


def evaluate_layouts(spec: ArchSpec, hw: Accelerator, world: int, seq_len: int, global_batch_tokens: int,
                     micro_batch: int = 1) -> list[dict]:
    """Every layout of `world` GPUs with its memory (with and without recomputation) and communication volume,
    fitting ones first, ranked by bytes sent per GPU per step."""
    budget = hw.memory_gb * 1e9 * MEMORY_HEADROOM
    rows = []
    for lay in layouts_for(spec, world, hw.gpus_per_node, global_batch_tokens, seq_len):
        mem = training_memory(spec, lay, seq_len, micro_batch, recompute=False)
        mem_rc = training_memory(spec, lay, seq_len, micro_batch, recompute=True)
        comm = communication_bytes(spec, lay, seq_len, global_batch_tokens, micro_batch)
        fits = mem["total"] <= budget
        fits_rc = mem_rc["total"] <= budget
        rows.append({"layout": str(lay), **asdict(lay), "memory_gb": mem["total"] / 1e9,
                     "memory_recompute_gb": mem_rc["total"] / 1e9, "fits": fits or fits_rc,
                     "recompute": (not fits) and fits_rc, "comm_gb": comm["total"] / 1e9,
                     "memory": mem if fits else mem_rc, "comm": comm})
    # recomputation costs ~1/3 more compute: rank it after layouts that fit without it at similar traffic
    rows.sort(key=lambda r: (not r["fits"], r["comm_gb"] * (1.33 if r["recompute"] else 1.0)))
    return rows


def smallest_fitting(spec: ArchSpec, hw: Accelerator, seq_len: int, global_batch_tokens: int,
                     max_world: int = 65536) -> tuple[int | None, list[dict]]:
    """The smallest power-of-two GPU count with a layout that fits, and its fitting layouts (ranked)."""
    for world in _powers_of_two(max_world):
        rows = [r for r in evaluate_layouts(spec, hw, world, seq_len, global_batch_tokens) if r["fits"]]
        if rows:
            return world, rows
    return None, []
