"""One score that moves even for small models: centred accuracy, per language and overall, plus mean bits per byte.

centred = (acc - chance) / (1 - chance): 0 at chance, 1 at perfect, negative below chance, so tasks with 2, 4 or 7
choices weigh the same (as nanochat's CORE metric does for English, after DCLM's "centered accuracy").

- per task group: the mean of its languages' centred accuracies;
- per language: the mean over the groups that have that language;
- overall: the mean over groups of the per-group means (each group counts once, however many languages it has);
- bpb: the mean bits per byte over the languages of `flores-200` (lower is better; not part of the centred mean).
"""

from __future__ import annotations

import math
from statistics import fmean
from typing import Any

from vernacular.eval.groups import ResolvedTask


def centred(acc: float, chance: float) -> float:
    return (acc - chance) / (1.0 - chance)


def task_rows(tasks: list[ResolvedTask], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task that has a result: task, group, lang, metric, value, stderr, chance, centred."""
    rows = []
    for t in tasks:
        res = results.get(t.task)
        if res is None or f"{t.group.metric},none" not in res:
            continue
        value = float(res[f"{t.group.metric},none"])
        stderr = res.get(f"{t.group.metric}_stderr,none")
        rows.append({
            "task": t.task, "group": t.group.name, "lang": t.lang, "metric": t.group.metric, "value": value,
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None, "chance": t.group.chance,
            "centred": None if t.group.chance is None else centred(value, t.group.chance),
            "samples": res.get("samples"),
        })  # fmt: skip
    return rows


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{"centred": overall, "bpb": mean bpb, "groups": {group: mean centred or mean bpb},
    "languages": {lang: {"centred": mean over groups, "bpb": ..., group: value}}} (None where nothing was measured)."""
    by_group: dict[str, list[float]] = {}
    bpb: dict[str, float] = {}
    languages: dict[str, dict[str, Any]] = {}
    for r in rows:
        lang = languages.setdefault(r["lang"], {})
        if r["centred"] is not None:
            by_group.setdefault(r["group"], []).append(r["centred"])
            lang[r["group"]] = r["centred"]
        elif r["metric"] == "bits_per_byte" and math.isfinite(r["value"]):
            bpb[r["lang"]] = r["value"]
            lang["bpb"] = r["value"]
    groups: dict[str, float] = {g: fmean(v) for g, v in by_group.items()}
    for code, lang in languages.items():
        scores = [v for k, v in lang.items() if k in groups]
        lang["centred"] = fmean(scores) if scores else None
    if bpb:
        groups["flores-200"] = fmean(bpb.values())
    centred_groups = [v for g, v in groups.items() if g in by_group]
    return {
        "centred": fmean(centred_groups) if centred_groups else None,
        "bpb": fmean(bpb.values()) if bpb else None,
        "groups": groups,
        "languages": languages,
    }


def format_table(rows: list[dict[str, Any]], agg: dict[str, Any], markdown: bool = False) -> str:
    """Per-language table: one row per language, one column per task group (centred accuracy x100, bpb as is), then
    the language's centred mean; the last row is the per-group mean and the overall score."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    header = ["lang", *groups, "centred"]

    def fmt(v, is_bpb=False):
        if v is None:
            return "-"
        return f"{v:.3f}" if is_bpb else f"{100 * v:+.1f}"

    body = []
    for lang, scores in agg["languages"].items():
        cells = [fmt(scores.get("bpb") if g == "flores-200" else scores.get(g), g == "flores-200") for g in groups]
        body.append([lang, *cells, fmt(scores.get("centred"))])
    body.append(["all", *[fmt(agg["groups"].get(g), g == "flores-200") for g in groups], fmt(agg["centred"])])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in [header, *body])
