"""The report card's summary, expert-load heatmap and links to the AI Act documents (sections of `report.md`).

Read from the same records as the documents (`records.collect`), so the report and the documents cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from vernacular.compliance.records import RunRecords, collect


def _fmt(n: float | None, unit: str = "") -> str:
    if n is None:
        return "—"
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.3g} {unit}".strip()


def summary_section(rec: RunRecords) -> list[str]:
    """A table: config, total/active parameters, tokens, FLOPs, wall time, hardware, energy per training stage."""
    from vernacular.compliance.documents import training_flops
    from vernacular.model.info import parameter_breakdown

    cfg = rec.model_config
    if cfg is None:
        return []
    b = parameter_breakdown(cfg)
    flops = training_flops(rec)
    rows = [("model", f"{(rec.config.get('pretrain') or {}).get('model', 'config')}: {cfg.num_hidden_layers} layers, "
                      f"hidden {cfg.hidden_size}, {cfg.n_routed_experts} routed experts (top-{cfg.num_experts_per_tok})"),
            ("parameters", f"{_fmt(b.total)} total, {_fmt(b.active)} active per token")]
    for stage, state in (("pretrain", rec.pretrain), ("sft", rec.sft)):
        if not state:
            continue
        energy = rec.energy.get(stage) or {}
        hw = energy.get("hardware") or {}
        device = ", ".join(hw.get("gpus") or []) or (f"{hw.get('cpu')} ({hw.get('cpu_cores')} cores)" if hw else "—")
        measured = {s.get("cpu_measurement", "").split(" ")[0] for s in energy.get("segments", []) if "energy_kwh" in s}
        rows += [
            (f"{stage}: tokens / steps", f"{_fmt(state.get('tokens'))} tokens in {state.get('step')} steps"),
            (f"{stage}: compute", f"{flops.get(stage, 0):.3g} FLOPs"),
            (f"{stage}: wall time", f"{(state.get('elapsed_s') or 0) / 60:.1f} min on {state.get('world_size', 1)} x {device}"),
            (f"{stage}: energy", f"{energy.get('energy_kwh', 0) * 1000:.2f} Wh ({'/'.join(sorted(measured)) or 'not measured'}, "
                                 f"codecarbon), {energy.get('emissions_kg', 0) * 1000:.2f} g CO2e" if energy else "not measured"),
        ]
    path = rec.run.metrics / "train.jsonl"
    if path.exists():
        steps = [r for r in (json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip())
                 if "tok_per_s" in r][1:]  # the first step includes warm-up
        if steps:
            import statistics

            tok_s = statistics.median(r["tok_per_s"] for r in steps)
            mfu = statistics.median(r["mfu"] for r in steps)
            rows.append(("pretrain: throughput", f"{tok_s:,.0f} tokens/s (median step), MFU {100 * mfu:.1f}% "
                                                 "(of the measured matmul peak on CPU, the bf16 peak on GPUs)"))
    lines = ["## Summary", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    return lines


def documents_section(rec: RunRecords) -> list[str]:
    run = rec.run
    docs = [("Public summary of training content (AI Act Art. 53(1)(d))", run.training_content_summary.with_suffix(".md")),
            ("Technical documentation (Annex XI)", run.technical_documentation.with_suffix(".md")),
            ("Copyright policy (Art. 53(1)(c))", run.copyright_policy)]
    present = [(t, p) for t, p in docs if p.exists()]
    if not present:
        return ["## AI Act documents", "", "Not written yet: `vernacular compliance --run-dir "
                f"{run.root} --provider provider.toml`.", ""]
    return ["## AI Act documents", ""] + [f"- [{t}]({p.name})" for t, p in present] + [""]


def expert_load_heatmap(rec: RunRecords, out: Path) -> list[str]:
    """Per-layer expert load (share of routed tokens per expert) over training, as a layers x experts heatmap per
    logged step range; read from `expert_load` records in metrics/train.jsonl."""
    path = rec.run.metrics / "train.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r.get("expert_load"), dict):
            rows.append((r["step"], r["expert_load"]))
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = sorted(rows[0][1])
    picks = [rows[0], rows[len(rows) // 2], rows[-1]] if len(rows) >= 3 else rows
    fig, axes = plt.subplots(1, len(picks), figsize=(4.5 * len(picks), 0.5 * len(layers) + 1.8), squeeze=False)
    for ax, (step, load) in zip(axes[0], picks):
        grid = np.array([load[layer] for layer in layers], dtype=float)
        n = grid.shape[1]
        im = ax.imshow(grid * n, aspect="auto", cmap="viridis", vmin=0, vmax=max(2.0, float((grid * n).max())))
        ax.set_title(f"step {step}")
        ax.set_xlabel("expert")
        ax.set_yticks(range(len(layers)), [layer.replace("model.layers.", "L") for layer in layers])
    fig.colorbar(im, ax=axes[0].tolist(), label="load / mean load")
    fig.suptitle("Expert load over training (1 = perfectly balanced)")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return ["## Expert load", "", f"![expert load]({out.name})", "",
            "Share of routed tokens per expert relative to the mean, per MoE layer, early, mid and late in training: "
            "auxiliary-loss-free balancing should pull every cell towards 1.", ""]


def sections(run_dir, report_dir: Path) -> tuple[list[str], list[str]]:
    """(sections for the top of report.md, sections for its end)."""
    rec = collect(run_dir)
    return summary_section(rec), expert_load_heatmap(rec, report_dir / "expert_load.png") + documents_section(rec)
