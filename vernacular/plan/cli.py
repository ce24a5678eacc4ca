"""`vernacular plan`: what a model costs to train, or what model a budget buys, and how to lay it out.

    vernacular plan --config deepseek-v3-671b --tokens 14.8e12 --gpu H800 --count 2048
    vernacular plan --gpu-hours 500000 --gpu GH200
    vernacular plan --config path/to/DeepSeek-V3/config.json --tokens 1e12 --gpu H100 --count 256 --json
"""

from __future__ import annotations

import argparse
import json
import sys


def _num(text: str) -> float:
    """`14.8e12`, `15T`, `500k`, `2.5M`, `1B` -> float."""
    t = text.strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(t[-1:], None)
    try:
        return float(t[:-1]) * scale if scale else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (e.g. 14.8e12, 15T, 500k)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    m = parser.add_argument_group("model (forward plan)")
    m.add_argument("--config", help="preset, .toml/.json of ours, or a transformers config.json / model folder")
    m.add_argument("--tokens", type=_num, help="training tokens (e.g. 14.8e12, 15T)")
    m.add_argument("--seq-len", type=int, default=4096, help="training sequence length (default 4096)")
    m.add_argument("--no-mtp", action="store_true", help="count no multi-token-prediction FLOPs")
    b = parser.add_argument_group("budget (inverse plan: give one)")
    b.add_argument("--gpu-hours", type=_num)
    b.add_argument("--euros", type=_num, help="needs --price")
    b.add_argument("--mwh", type=_num, help="energy budget in MWh (GPU power x PUE)")
    b.add_argument("--law", default="deepseek", choices=["deepseek", "chinchilla"], help="scaling law (default deepseek)")
    b.add_argument("--tokens-per-param", type=_num, default=None, help="fixed tokens per active parameter instead")
    h = parser.add_argument_group("hardware")
    h.add_argument("--gpu", default="H100", help="H100, H200, H800, B200, GH200, MI300X (or A100, L40S, L4)")
    h.add_argument("--count", type=int, default=None, help="number of GPUs (forward plan; default: smallest that fits)")
    h.add_argument("--peak-tflops", type=float, help="custom accelerator: dense bf16 TFLOP/s")
    h.add_argument("--memory-gb", type=float, help="custom accelerator: memory in GB")
    h.add_argument("--power-w", type=float, help="custom accelerator: power in W")
    h.add_argument("--dtype", default="bf16", choices=["bf16", "fp8"], help="peak to use for MFU (default bf16)")
    h.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation, 0-1 (default: measured or 0.40)")
    h.add_argument("--global-batch-tokens", type=_num, default=4 * 2**20, help="tokens per optimizer step (default 4M)")
    c = parser.add_argument_group("cost and energy")
    c.add_argument("--price", type=float, default=None, help="euros per GPU-hour")
    c.add_argument("--pue", type=float, default=1.2, help="data-centre power usage effectiveness (default 1.2)")
    c.add_argument("--grid", type=float, default=250.0, help="grid carbon intensity, gCO2/kWh (default 250, ~EU mean)")
    b.add_argument("--save-config", metavar="PATH", help="write the generated config as a .toml preset "
                   "(for `vernacular pretrain --config PATH`)")
    parser.add_argument("--layouts", type=int, default=5, help="how many fitting layouts to print (default 5)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _fmt(n: float, unit: str = "") -> str:
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.2f}{unit}"


def _energy(mwh: float) -> str:
    return f"{mwh:,.1f} MWh" if mwh >= 1 else f"{mwh * 1000:,.1f} kWh"


def _co2(tonnes: float) -> str:
    return f"{tonnes:,.1f} t" if tonnes >= 1 else f"{tonnes * 1000:,.1f} kg"


def _layout_lines(rows: list[dict], k: int) -> list[str]:
    out = [f"  {'layout':<22} {'GB/GPU':>8} {'recompute':>9} {'comm GB/step/GPU':>17}"]
    for r in rows[:k]:
        mem = r["memory_recompute_gb"] if r["recompute"] else r["memory_gb"]
        out.append(f"  {r['layout']:<22} {mem:>8.1f} {'yes' if r['recompute'] else 'no':>9} {r['comm_gb']:>17.1f}")
    return out


def main(args: argparse.Namespace) -> int:
    from vernacular.plan import hardware
    from vernacular.plan.planner import (
        budget_to_gpu_hours,
        evaluate_layouts,
        forward_plan,
        inverse_plan,
        load_model,
        smallest_fitting,
    )

    try:
        if args.peak_tflops or args.memory_gb or args.power_w:
            hw = hardware.custom(args.gpu, args.peak_tflops or 0, args.memory_gb or 0, args.power_w or 0)
        else:
            hw = hardware.accelerator(args.gpu)
        inverse = any(x is not None for x in (args.gpu_hours, args.euros, args.mwh))
        if inverse == bool(args.tokens):
            raise ValueError("give either --config/--tokens (forward plan) or a budget: --gpu-hours, --euros or --mwh")
        gbt = int(args.global_batch_tokens)
        result: dict = {"accelerator": hw.to_dict()}
        if inverse:
            hours = budget_to_gpu_hours(hw, args.gpu_hours, args.euros, args.mwh, args.price, args.pue)
            result["inverse"] = inv = inverse_plan(hours, hw, args.mfu, args.seq_len, args.law, args.tokens_per_param,
                                                   args.dtype)
            from vernacular.model.config import ModelConfig
            from vernacular.model.info import arch_spec

            spec = arch_spec(ModelConfig.from_dict(inv["generated_config"]))
            spec.name = "generated"
            if args.save_config:
                import tomli_w

                from vernacular.run import atomic_write_bytes

                table = {k: v for k, v in inv["generated_config"].items() if v is not None}
                atomic_write_bytes(args.save_config, tomli_w.dumps(table).encode())
                spec.name = args.save_config
            tokens, notes = inv["generated_tokens"], []
        else:
            spec, _, notes = load_model(args.config or "tiny")
            tokens = args.tokens
        count = args.count
        if count is None:
            count, rows = smallest_fitting(spec, hw, args.seq_len, gbt)
            if count is None:
                raise ValueError(f"no layout of up to 65536 {hw.name} fits {spec.name} at seq_len {args.seq_len}")
        else:
            rows = [r for r in evaluate_layouts(spec, hw, count, args.seq_len, gbt) if r["fits"]]
        fwd = forward_plan(spec, tokens, hw, count, args.mfu, args.seq_len, args.dtype, args.price, args.pue,
                           args.grid, include_mtp=not args.no_mtp)
        result.update({"forward": fwd, "layouts": rows, "notes": notes})
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    lines = []
    if "inverse" in result:
        inv = result["inverse"]
        lines += [
            f"budget: {_fmt(inv['budget_gpu_hours'])} {hw.name} GPU-hours at MFU {inv['mfu']:.0%} ({inv['mfu_source']})"
            f" = {inv['compute_flops']:.3g} FLOPs",
            f"compute-optimal ({inv['law']}, on active compute):",
            f"  active ~{_fmt(inv['optimal_active_params_approx'])} params "
            f"({inv['optimal_flops_per_token']:.3g} non-embedding FLOPs/token), {_fmt(inv['optimal_tokens'])} tokens",
            f"  nearest preset: {inv['nearest_preset']} ({inv['nearest_preset_ratio']:.1f}x off in FLOPs/token)",
            f"  generated config (DeepSeek-V3 proportions): hidden {inv['generated_config']['hidden_size']}, "
            f"{inv['generated_config']['num_hidden_layers']} layers, {_fmt(inv['generated_total_params'])} total / "
            f"{_fmt(inv['generated_active_params'])} active, {_fmt(inv['generated_tokens'])} tokens",
            "  (DeepSeek-V3 itself trained ~400 tokens per active parameter, far past compute-optimal, for cheaper "
            "inference: try --tokens-per-param 400)",
            "",
        ]
    f = result["forward"]
    cost = f"{f['cost']:,.0f} EUR at {f['price_per_gpu_hour']}/GPU-h" if f["cost"] is not None else "(give --price)"
    lines += [
        f"model: {f['model']} — {_fmt(f['total_params'])} total / {_fmt(f['active_params'])} active parameters",
        *[f"  note: {n}" for n in result["notes"]],
        f"training: {_fmt(f['tokens'])} tokens x {f['flops_per_token']:.3g} FLOPs/token (seq {f['seq_len']}) "
        f"= {f['training_flops']:.3g} FLOPs",
        f"hardware: {f['count']} x {hw.name} ({hw.bf16_tflops:g} TFLOP/s bf16 dense, {hw.memory_gb:g} GB, {hw.power_w:g} W)"
        f", MFU {f['mfu']:.0%} ({f['mfu_source']})",
        f"  GPU-hours     {_fmt(f['gpu_hours'])}",
        f"  wall clock    {f['wall_clock_days']:.1f} days",
        f"  cost          {cost}",
        f"  energy        {_energy(f['energy_mwh'])} (GPU power x hours x PUE {f['pue']})",
        f"  CO2           {_co2(f['co2_tonnes'])} (at {f['grid_g_per_kwh']:g} gCO2/kWh)",
        f"layouts on {f['count']} GPUs that fit in {hw.memory_gb:g} GB (FSDP2 over dp, experts over ep; "
        f"global batch {_fmt(int(args.global_batch_tokens))} tokens), least communication first:",
    ]
    if result["layouts"]:
        lines += _layout_lines(result["layouts"], args.layouts)
    else:
        smallest, _ = smallest_fitting(spec, hw, args.seq_len, int(args.global_batch_tokens))
        lines.append(f"  none fits on {f['count']} x {hw.name}: "
                     + (f"the smallest count that fits is {smallest}" if smallest else "no count up to 65536 fits"))
    print("\n".join(lines))
    return 0
