"""PII detection on a labelled multilingual test set: precision and recall of `vernacular.data.pii` next to datatrove's
PIIFormatter (e-mails and public IPs only: it has no IBAN or phone detector).

    python benchmarks/pii.py [--data tests/data/pii/labelled.tsv] [--errors]

The set (`tests/data/pii/labelled.tsv`, CC0, written for this project) has one text per line: language, text, and the
exact PII substrings as JSON `[[kind, value], ...]`; half the lines are hard negatives (versions, section numbers,
package specifiers, dates, ISBNs, amounts, private and documentation addresses, failed IBAN checksums). A prediction
counts as correct when its kind and its exact text are in the line's labels (each label once).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "pii" / "labelled.tsv"
KINDS = ("email", "ip", "iban", "phone")


def load(path: Path = DATA) -> list[tuple[str, str, list[tuple[str, str]]]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        lang, text, pii = line.split("\t")
        rows.append((lang, text, [tuple(x) for x in json.loads(pii)]))
    return rows


def ours(text: str, lang: str) -> list[tuple[str, str]]:
    from vernacular.data.pii import find_pii

    return [(p.kind, p.text) for p in find_pii(text, lang)]


def datatrove(text: str, lang: str) -> list[tuple[str, str]]:
    from datatrove.pipeline.formatters.pii import PIIFormatter

    f = datatrove.formatter = getattr(datatrove, "formatter", None) or PIIFormatter()
    out = []
    for kind, replacer in (("email", f.emails_replacer), ("ip", f.ip_replacer)):
        for m in replacer.regex.finditer(text):
            if replacer.validator is None or replacer.validator(m.group(0)):
                out.append((kind, m.group(0)))
    return out


def score(detect, rows, kinds=KINDS) -> dict:
    """Per kind and overall: true/false positives, false negatives, precision, recall; plus the errors."""
    tp, fp, fn = Counter(), Counter(), Counter()
    errors = []
    for lang, text, _ in rows:  # warm-up: imports, compiled patterns, phone metadata loaded on first use
        detect(text, lang)
    t0 = time.perf_counter()
    for lang, text, gold in rows:
        pred = [p for p in detect(text, lang) if p[0] in kinds]
        remaining = Counter(g for g in gold if g[0] in kinds)
        for p in pred:
            if remaining[p] > 0:
                remaining[p] -= 1
                tp[p[0]] += 1
            else:
                fp[p[0]] += 1
                errors.append(("false positive", lang, p, text))
        for g, n in remaining.items():
            fn[g[0]] += n
            errors.extend([("missed", lang, g, text)] * n)
    seconds = time.perf_counter() - t0

    def pr(t, f_p, f_n):
        return {"tp": t, "fp": f_p, "fn": f_n, "precision": t / (t + f_p) if t + f_p else 1.0,
                "recall": t / (t + f_n) if t + f_n else 1.0}

    out = {k: pr(tp[k], fp[k], fn[k]) for k in kinds}
    out["all"] = pr(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    out["us_per_line"] = seconds / len(rows) * 1e6
    out["errors"] = errors
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--errors", action="store_true", help="print every false positive and missed label")
    args = ap.parse_args()
    rows = load(Path(args.data))
    langs = sorted({r[0] for r in rows})
    n_labels = Counter(g[0] for r in rows for g in r[2])
    print(f"{len(rows)} lines in {len(langs)} languages ({', '.join(langs)}); labels: "
          + ", ".join(f"{k} {n_labels[k]}" for k in KINDS) + f"; {sum(not r[2] for r in rows)} lines without PII")
    results = {"vernacular": score(ours, rows), "datatrove PIIFormatter": score(datatrove, rows)}
    dt_kinds = score(datatrove, rows, ("email", "ip"))
    ours_kinds = score(ours, rows, ("email", "ip"))
    print(f"\n{'detector':<24} {'kind':<6} {'tp':>4} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7}")
    for name, res in results.items():
        for k in (*KINDS, "all"):
            r = res[k]
            print(f"{name:<24} {k:<6} {r['tp']:>4} {r['fp']:>4} {r['fn']:>4} {r['precision']:>9.3f} {r['recall']:>7.3f}")
        print(f"{name:<24} {res['us_per_line']:.0f} µs per line (warm; the timing includes scoring)")
    a, b = ours_kinds["all"], dt_kinds["all"]
    print(f"\ne-mail + IP only (datatrove's scope): vernacular P {a['precision']:.3f} R {a['recall']:.3f}; "
          f"datatrove P {b['precision']:.3f} R {b['recall']:.3f}")
    if args.errors:
        for name, res in results.items():
            print(f"\n{name}:")
            for kind, lang, item, text in res["errors"]:
                print(f"  {kind:<14} {lang} {item}  <- {text}")


if __name__ == "__main__":
    main()
