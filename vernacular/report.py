"""`vernacular report`: one Markdown page (plus PNG plots) that says what a run did.

It only reads what the stages left in the run directory, so it can be rerun at any time and shows whatever stages have
run so far: data provenance (manifest), tokenizer parity, the training curve next to the validation curve (with how
many passes over the training data the run made, and a warning when validation rises while training loss falls:
overfitting), the per-language validation bits-per-byte, the chat fine-tuning (held-out loss, language confusion)
and the evaluation table with its aggregate (`vernacular eval`). People would rather look than read, so the curves
and the per-language figures are plots too.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
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
            for step, by_reason in stats.get("removed", {}).items():  # {step: {reason: documents}}
                for reason, count in (by_reason.items() if isinstance(by_reason, dict) else [(step, by_reason)]):
                    key = step if reason == step else f"{step}: {reason}"
                    reasons[key] = reasons.get(key, 0) + (count if isinstance(count, int) else 0)
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


# Validation is "still falling" when its last point is within this fraction of the run's best (issue 8's criterion).
VAL_TOLERANCE = 0.02


def overfitting_warning(train_rows: list[dict], val_rows: list[dict], tolerance: float = VAL_TOLERANCE) -> str | None:
    """A warning when validation bpb rises while training loss falls, else None.

    `val_rows`: metrics/val.jsonl records (`step`, `val_bpb_mean`, optional `train_loss`); `train_rows`:
    metrics/train.jsonl records (`step`, `main_loss`). Fires when the last validation mean is more than `tolerance`
    (relative) above the run's minimum while the training loss at the last evaluation is lower than at the minimum's:
    the model is memorising its training text (too many epochs over too little data) instead of generalising."""
    points = [r for r in val_rows if isinstance(r.get("val_bpb_mean"), (int, float))]
    if len(points) < 2:
        return None
    best = min(points, key=lambda r: r["val_bpb_mean"])
    last = points[-1]
    if last["val_bpb_mean"] <= best["val_bpb_mean"] * (1 + tolerance):
        return None

    def train_loss_at(point: dict) -> float | None:
        if isinstance(point.get("train_loss"), (int, float)):
            return point["train_loss"]
        losses = [r["main_loss"] for r in train_rows if "main_loss" in r and r["step"] <= point["step"]][-10:]
        return sum(losses) / len(losses) if losses else None

    loss_best, loss_last = train_loss_at(best), train_loss_at(last)
    if loss_best is None or loss_last is None or loss_last >= loss_best:
        return None
    rise = last["val_bpb_mean"] / best["val_bpb_mean"] - 1
    return (f"validation bpb rose {rise:.1%} from its minimum {best['val_bpb_mean']:.4f} (step {best['step']}) to "
            f"{last['val_bpb_mean']:.4f} (step {last['step']}) while the training loss fell from {loss_best:.4f} to "
            f"{loss_last:.4f}: the model is overfitting its training data. Use more data or a shorter run.")


def _epochs(train_rows: list[dict], manifest: dict | None) -> tuple[float | None, float]:
    """(passes over the training windows, largest per-language repeat of the train mix) of a run."""
    steps = [r for r in train_rows if "loss" in r]
    epochs = steps[-1].get("epochs") if steps else None
    repeat = 1.0
    for stats in ((manifest or {}).get("tokens", {}).get("train", {}) or {}).values():
        repeat = max(repeat, float(stats.get("repeat_factor", 1.0)))
    return epochs, repeat


def _plot_training(rows: list[dict], out: Path, val_rows: list[dict] | None = None) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if "loss" in r and "tokens" in r]
    if not steps:
        return False
    val_rows = [r for r in val_rows or [] if isinstance(r.get("val_bpb_mean"), (int, float))]
    fig, axes = plt.subplots(1, 2 if val_rows else 1, figsize=(12 if val_rows else 7, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["tokens"] for r in steps], [r["loss"] for r in steps], label="total loss (main + MTP + balance)", lw=1)
    if any("main_loss" in r for r in steps):
        ax.plot([r["tokens"] for r in steps], [r.get("main_loss") for r in steps], label="main (next-token) loss", lw=1)
    ax.set_xlabel("tokens")
    ax.set_ylabel("training loss (nats)")
    ax.set_title("training")
    ax.grid(alpha=0.3)
    ax.legend()
    if val_rows:
        ax = axes[0][1]
        langs = sorted({lang for r in val_rows for lang in r.get("val_bpb", {})})
        for lang in langs:
            pts = [(r["tokens"], r["val_bpb"][lang]) for r in val_rows if lang in r.get("val_bpb", {})]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.6, alpha=0.35, color="gray")
        ax.plot([r["tokens"] for r in val_rows], [r["val_bpb_mean"] for r in val_rows], "o-", color="#c03030",
                label="mean over languages")
        ax.plot([], [], lw=0.6, color="gray", label="one language")
        ax.set_xlabel("tokens")
        ax.set_ylabel("validation bits per byte")
        ax.set_title("validation (held-out text)")
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


def _confused_with(path: Path) -> dict[str, str]:
    """Per question language, the languages its failed answers were identified as, most frequent first
    ("ces ×5, slv ×1"): close neighbours merging (Slovak answered in Czech) show at a glance."""
    from vernacular.run import read_json

    if not path.exists():
        return {}
    counts: dict[str, Counter] = {}
    for d in read_json(path).get("details", []):
        if d.get("pass") is False and d.get("detected") and d["detected"] != d.get("lang"):
            counts.setdefault(d["lang"], Counter())[d["detected"]] += 1
    return {lang: ", ".join(f"{other} ×{n}" for other, n in c.most_common()) for lang, c in counts.items()}


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
    dpo = val.get("language_dpo")
    if dpo:
        wrong = ", ".join(f"{lang} {n}" for lang, n in dpo.get("wrong_answers", {}).items())
        lines += [f"Language DPO (`--language-dpo`): {dpo.get('steps')} steps on {dpo.get('pairs')} of the model's own "
                  f"answers to its training questions that were in another language ({wrong or 'none'}), each the "
                  f"rejected side against the reference answer"
                  + (f"; held-out loss before DPO {val['val_loss_before_dpo']:.4f}"
                     if isinstance(val.get("val_loss_before_dpo"), (int, float)) else "") + ".", ""]
    confusion = val.get("language_confusion") or {}
    rate = confusion.get("line_level_pass_rate")
    if confusion.get("answers") and confusion.get("answers_scored") is not None:  # older runs lack the counts
        lines += [f"Language confusion, line-level pass rate (the Language Confusion Benchmark's rules: every line of "
                  f"5 or more words in the question's language, py3langid over the 24 EU languages, averaged over "
                  f"languages; greedy answers of {confusion.get('max_tokens')} tokens to {confusion['answers']} "
                  f"held-out questions, {confusion['answers_skipped']} of them too short to score): "
                  + (f"**{100 * rate:.1f}%**." if rate is not None else "no answer could be scored.")
                  + f" Whole answers in the question's language, all {confusion['answers']} counted: "
                    f"{100 * confusion['response_pass_rate']:.1f}%."
                  + (f" {100 * confusion['stop_rate']:.0f}% of the answers ended on the end-of-turn token "
                     f"`<|end|>` (finish_reason `stop`)." if confusion.get("stop_rate") is not None else ""),
                  "", "| language | pass rate | failed answers identified as |", "|---|---:|---|"]
        instead = _confused_with(run.metrics / "language_confusion.json")
        lines += [f"| {lang} | {100 * r:.0f}% | {instead.get(lang, '')} |"
                  for lang, r in sorted(confusion.get("per_language", {}).items())]
        lines += ["", "Every question and answer: `metrics/language_confusion.json`.", ""]
        from vernacular.sft.confusion import summary

        print(f"\nlanguage confusion: {summary(confusion)}")
    elif rate is not None:  # a run from before the LCB rules: whole answers, all counted
        lines += [(f"Language confusion (share of {confusion.get('answers')} held-out answers whose every line is "
                   f"in the question's language): **{100 * rate:.1f}%**."), ""]
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


def _curve_lines(rows: list[dict], val_rows: list[dict], manifest: dict | None) -> list[str]:
    """Epochs, the validation curve's end against its minimum, and the overfitting warning (also printed)."""
    out = []
    epochs, repeat = _epochs(rows, manifest)
    if epochs is not None:
        if epochs > 1.0:
            note = "the run repeated its data: every training token was read more than once"
        elif repeat > 1.0:
            note = (f"no pass was repeated, but the language mix holds some documents up to {repeat:.2f}x "
                    "(upsampled languages), so some may have been read twice")
        else:
            note = "no training token was read twice"
        out.append(f"Data epochs: **{epochs:.3g}** passes over the training tokens: {note}.")
        print(f"data epochs: {epochs:.3g} ({note})")
    points = [r for r in val_rows if isinstance(r.get("val_bpb_mean"), (int, float))]
    if points:
        best = min(r["val_bpb_mean"] for r in points)
        final = points[-1]["val_bpb_mean"]
        state = "still falling" if final <= best * (1 + VAL_TOLERANCE) else "rising"
        out.append(f"Validation: {len(points)} evaluations; mean bpb {points[0]['val_bpb_mean']:.4f} -> final "
                   f"**{final:.4f}** (minimum {best:.4f}, final is {final / best - 1:+.2%} from it: {state}).")
        print(f"validation bpb: final {final:.4f}, minimum {best:.4f} ({final / best - 1:+.2%})")
    if warning := overfitting_warning(rows, val_rows):
        out.append(f"\n> **Warning:** {warning}")
        print(f"warning: {warning}")
    return out


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

    manifest = read_json(run.manifest) if run.manifest.exists() else None
    if manifest is not None:
        lines += _data_section(manifest)
    parity_json = run.tokenizer / "parity.json"
    if parity_json.exists():
        lines += _parity_section(read_json(parity_json))

    if run.train_metrics.exists():
        rows = _read_jsonl(run.train_metrics)
        val_rows = _read_jsonl(run.val_metrics) if run.val_metrics.exists() else []
        if _plot_training(rows, run.report / "training.png", val_rows):
            last = [r for r in rows if "loss" in r][-1]
            lines += ["## Training", "", f"{last.get('step')} steps, {last.get('tokens')} tokens, "
                      f"final loss {last['loss']:.4f}.", ""]
            lines += _curve_lines(rows, val_rows, manifest)
            lines += ["", "![training](training.png)", ""]

    if run.val_final.exists():
        val = read_json(run.val_final)
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
