"""`vernacular report`: one Markdown page (plus PNG plots) that says what a run did.

It only reads what the stages left in the run directory, so it can be rerun at any time and shows whatever stages have
run so far: data provenance (manifest), tokenizer parity, the training curve, the per-language validation
bits-per-byte, the chat fine-tuning (held-out loss, language confusion) and the evaluation table with its
aggregate (`vernacular eval`). People would rather look than read, so the curves and the per-language figures are
plots too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="run directory")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            rows.append(json.loads(line))
    return rows


def _data_section(manifest: dict) -> list[str]:
    totals = manifest.get("totals", {})
    lines = ["## Data", ""]
    lines.append(
        f"{totals.get('documents_in', 0)} documents in, {totals.get('documents_kept', 0)} kept, "
        f"{totals.get('documents_removed', 0)} removed, {totals.get('documents_quarantined', 0)} quarantined "
        f"(counts balance: {totals.get('balanced')})."
    )
    reasons: dict[str, int] = {}
    lines += ["", "| source | language | licence | docs in | kept | removed | train tokens | val tokens |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, source in manifest.get("sources", {}).items():
        for lang, stats in sorted(source.get("languages", {}).items()):
            for reason, count in stats.get("removed", {}).items():
                reasons[reason] = reasons.get(reason, 0) + (count if isinstance(count, int) else 0)
            tokens = stats.get("tokens", {})
            lines.append(
                f"| {name} | {lang} | {source.get('declared_licence', '')} | {stats.get('documents_in', 0)} | "
                f"{stats.get('documents_kept', 0)} | {stats.get('documents_removed', 0)} | "
                f"{tokens.get('train', '')} | {tokens.get('val', '')} |"
            )
    if reasons:
        lines += ["", "| removed because | documents |", "|---|---:|"]
        lines += [f"| {reason} | {count} |" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])]
    lines += ["", "Full provenance (collection dates, dedup ratios, PII redactions, top domains): `data/manifest.json`."]
    return lines + [""]


def _parity_section(parity: dict) -> list[str]:
    lines = ["## Tokenizer parity", ""]
    worst = parity.get("worst_language")
    premium = parity.get("max_premium")
    if premium is not None:
        lines.append(f"Max premium over English: **{premium:.3f}** (worst: {worst}).")
    lines += ["", "![parity](../tokenizer/parity.png)", ""]
    return lines


def _plot_training(rows: list[dict], out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if "loss" in r and "tokens" in r]
    if not steps:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["tokens"] for r in steps], [r["loss"] for r in steps], label="total loss (main + MTP + balance)", lw=1)
    if any("main_loss" in r for r in steps):
        ax.plot([r["tokens"] for r in steps], [r.get("main_loss") for r in steps], label="main (next-token) loss", lw=1)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def _plot_bpb(bpb: dict[str, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(bpb.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(items)), 4))
    ax.bar([k for k, _ in items], [v for _, v in items], color="#3060a0")
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.tick_params(axis="x", rotation=90)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _sft_section(run) -> list[str]:
    """Chat fine-tuning: the conversations used and rejected, held-out loss before/after, language confusion."""
    from vernacular.run import read_json

    lines = ["## Chat fine-tuning (SFT)", ""]
    if (run.sft / "data.json").exists():
        data = read_json(run.sft / "data.json")
        rejected = {k: v for k, v in data.get("rejected", {}).items() if v}
        lines.append(f"{data.get('records', 0)} conversations read, {data.get('train', 0)} for training and "
                     f"{data.get('val', 0)} held out ({len(data.get('languages', {}))} languages); "
                     f"{sum(rejected.values())} rejected"
                     + (" (" + ", ".join(f"{k} {v}" for k, v in rejected.items()) + "; `sft/rejects.jsonl`)"
                        if rejected else "") + ".")
    val_path = run.metrics / "sft_val.json"
    if not val_path.exists():
        return lines + [""]
    val = read_json(val_path)
    line = f"{val.get('step')} steps, {val.get('tokens')} tokens."
    if isinstance(val.get("val_loss"), (int, float)):
        line += f" Held-out assistant loss: **{val['val_loss']:.4f}** nats/token"
        if isinstance(val.get("val_loss_start"), (int, float)):
            line += f" (before fine-tuning: {val['val_loss_start']:.4f})"
        line += "."
    lines += ["", line, ""]
    confusion = val.get("language_confusion") or {}
    rate = confusion.get("line_level_pass_rate")
    if rate is not None:
        lines += [f"Language confusion (line-level pass rate: the share of answers whose every line is in the "
                  f"question's language, py3langid over the 24 EU languages; greedy answers of "
                  f"{confusion.get('max_tokens')} tokens to {confusion.get('answers')} held-out questions): "
                  f"**{100 * rate:.1f}%**.", "", "| language | pass rate |", "|---|---:|"]
        lines += [f"| {lang} | {100 * r:.0f}% |" for lang, r in sorted(confusion.get("per_language", {}).items())]
        lines += ["", "Every question and answer: `metrics/language_confusion.json`.", ""]
        print(f"\nlanguage confusion (line-level pass rate): {100 * rate:.1f}% over {confusion.get('answers')} "
              f"held-out questions")
    return lines


def _plot_eval(languages: dict[str, dict], out: Path) -> None:
    """Per-language chart of `vernacular eval`: centred accuracy (x100) and, beside it, FLORES bits per byte."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = list(languages)
    panels = [(key, label) for key, label in (("centred", "centred accuracy x100 (0 = chance)"),
                                              ("bpb", "FLORES-200 bits per byte (lower is better)"))
              if any(languages[lang].get(key) is not None for lang in langs)]  # fmt: skip
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.35 * len(langs)), 3.2 * len(panels)), squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels):
        values = [languages[lang].get(key) for lang in langs]
        scale = 100 if key == "centred" else 1
        ax.bar(langs, [scale * v if v is not None else 0 for v in values], color="#3060a0" if key == "bpb" else "#a06030")
        ax.set_ylabel(label, fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.tick_params(axis="x", rotation=90)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _eval_section(summary: dict, out: Path) -> list[str]:
    from vernacular.eval.aggregate import format_table

    agg = summary["aggregate"]
    lines = ["## Evaluation (lm-evaluation-harness)", ""]
    parts = []
    if agg.get("centred") is not None:
        parts.append(f"centred accuracy **{100 * agg['centred']:+.1f}** (x100: 0 = chance, 100 = perfect)")
    if agg.get("bpb") is not None:
        parts.append(f"mean FLORES-200 bits per byte **{agg['bpb']:.4f}**")
    lines += ["Aggregate: " + "; ".join(parts) + ". Cells: centred accuracy x100 per task group, bits per byte for "
              "flores-200; `centred` is the language's mean over groups (docs/evaluation.md).", ""]
    lines += [format_table(summary["tasks"], agg, markdown=True), ""]
    if summary.get("limit"):
        lines += [f"(at most {summary['limit']} documents per task)", ""]
    _plot_eval(agg["languages"], out)
    return lines + [f"![evaluation]({out.name})", "", "Every score: `metrics/eval.json`.", ""]


def write_report(run_dir: str | Path) -> Path:
    from vernacular.run import RunDir, atomic_write_bytes, read_json

    run = RunDir(run_dir)
    if not run.root.exists():
        raise SystemExit(f"error: run directory {run.root} does not exist")
    run.report.mkdir(parents=True, exist_ok=True)
    lines = [f"# Run report: `{run.root.name}`", ""]
    from vernacular.compliance.report_card import sections

    top, bottom = sections(run.root, run.report)
    lines += top

    if run.manifest.exists():
        lines += _data_section(read_json(run.manifest))
    parity_json = run.tokenizer / "parity.json"
    if parity_json.exists():
        lines += _parity_section(read_json(parity_json))

    train_jsonl = run.metrics / "train.jsonl"
    if train_jsonl.exists():
        rows = _read_jsonl(train_jsonl)
        if _plot_training(rows, run.report / "training.png"):
            last = [r for r in rows if "loss" in r][-1]
            lines += ["## Training", "", f"{last.get('step')} steps, {last.get('tokens')} tokens, "
                      f"final loss {last['loss']:.4f}.", "", "![training](training.png)", ""]

    val_json = run.metrics / "val.json"
    if val_json.exists():
        val = read_json(val_json)
        bpb = val.get("val_bpb", {})
        bpb = {k: float(v) for k, v in bpb.items() if isinstance(v, (int, float))}
        if bpb:
            _plot_bpb(bpb, run.report / "bpb.png")
            lines += ["## Validation bits per byte, per language", "", "| language | bpb |", "|---|---:|"]
            lines += [f"| {lang} | {value:.4f} |" for lang, value in sorted(bpb.items())]
            mean = sum(bpb.values()) / len(bpb)
            lines += [f"| **mean** | **{mean:.4f}** |", "", "![bpb](bpb.png)", ""]
            print("\nper-language validation bits per byte:")
            for lang, value in sorted(bpb.items()):
                print(f"  {lang}  {value:.4f}")
            print(f"  mean {mean:.4f}")

    if (run.metrics / "sft_val.json").exists() or (run.sft / "data.json").exists():
        lines += _sft_section(run)

    if run.eval_results.exists():
        lines += _eval_section(read_json(run.eval_results), run.report / "eval.png")

    lines += bottom
    out = run.report / "report.md"
    atomic_write_bytes(out, "\n".join(lines).encode())
    return out


def main(args: argparse.Namespace) -> int:
    out = write_report(args.run_dir)
    print(f"report written to {out}")
    return 0
