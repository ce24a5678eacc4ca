"""Tokenizer parity: how many more tokens a language pays than English for the same sentences.

On an aligned folder (`<lang>.txt` files, line i the same sentence in every language, e.g. FLORES), the premium of a
language is its token count summed over all lines divided by English's. A premium of 1.4 means that language's users
pay 40% more per sentence, fit 40% less text in the context window and get slower generation. We also report
bytes/token (compression) and tokens/word (fragmentation).
"""

from __future__ import annotations

from pathlib import Path

from vernacular.tokenizer.corpus import read_folder


def parity_report(tokenizer, aligned: str | Path | dict[str, list[str]], reference: str = "eng") -> dict:
    """tokenizer: a `tokenizers.Tokenizer` or a path to one. Encodes each line on its own, without special tokens."""
    from vernacular.tokenizer import load

    tok = load(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    docs = read_folder(aligned) if not isinstance(aligned, dict) else aligned
    if reference not in docs:
        raise ValueError(f"the aligned set has no {reference}.txt to measure premiums against (languages: {sorted(docs)})")
    lines = {len(v) for v in docs.values()}
    if len(lines) != 1:
        counts = {k: len(v) for k, v in sorted(docs.items())}
        raise ValueError(f"the folder is not aligned: languages have different line counts {counts}")
    per_lang = {}
    for lang, text in sorted(docs.items()):
        enc = tok.encode_batch(text, add_special_tokens=False)
        n_tokens = sum(len(e.ids) for e in enc)
        n_bytes = sum(len(t.encode("utf-8")) for t in text)
        n_words = sum(len(t.split()) for t in text)
        per_lang[lang] = {"tokens": n_tokens, "bytes": n_bytes, "words": n_words, "chars": sum(len(t) for t in text),
                          "bytes_per_token": n_bytes / max(n_tokens, 1), "tokens_per_word": n_tokens / max(n_words, 1)}
    ref_tokens = per_lang[reference]["tokens"]
    for stats in per_lang.values():
        stats["premium"] = stats["tokens"] / ref_tokens
    worst = max(per_lang, key=lambda k: per_lang[k]["premium"])
    premiums = [s["premium"] for s in per_lang.values()]
    return {
        "reference": reference,
        "lines": lines.pop(),
        "languages": len(per_lang),
        "vocab_size": tok.get_vocab_size(),
        "max_premium": per_lang[worst]["premium"],
        "worst_language": worst,
        "mean_premium": sum(premiums) / len(premiums),
        "reference_bytes_per_token": per_lang[reference]["bytes_per_token"],
        "per_language": per_lang,
    }


def steering_dev_set(tokenizer) -> str | None:
    """The dev set that steered a tokenizer's merges, from the train_stats.json saved next to it (None: plain BPE, or
    not one of ours)."""
    import json

    if not isinstance(tokenizer, (str, Path)):
        return None
    folder = Path(tokenizer) if Path(tokenizer).is_dir() else Path(tokenizer).parent
    try:
        return json.loads((folder / "train_stats.json").read_text()).get("parity_dev")
    except (OSError, ValueError):
        return None


def plot_parity(reports: dict[str, dict], path: str | Path, title: str = "Tokenizer premium vs English") -> Path:
    """Bar chart of the premium per language (sorted by the first report), with the parity line at 1.0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(reports)
    first = reports[names[0]]["per_language"]
    langs = sorted(first, key=lambda k: first[k]["premium"], reverse=True)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(8, 0.38 * len(langs) * max(1, len(names) * 0.8)), 4.5))
    for j, name in enumerate(names):
        rep = reports[name]
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(langs))]
        ys = [rep["per_language"][lang]["premium"] for lang in langs]
        ax.bar(xs, ys, width=width, label=f"{name}: max {rep['max_premium']:.2f} ({rep['worst_language']})")
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xticks(range(len(langs)), langs, rotation=60, fontsize=8)
    ax.set_ylabel(f"tokens relative to {reports[names[0]]['reference']}")
    ax.set_ylim(0.8, max(r["max_premium"] for r in reports.values()) * 1.05)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_parity(tokenizer, aligned, out_dir: str | Path, name: str = "vernacular", parity_dev: str | None = None) -> dict:
    """parity.json + parity.png into out_dir; returns the report. parity_dev: the dev set that steered the merges
    (recorded in the report; the tokenizer's train_stats.json next to it is read when not given)."""
    from vernacular.run import write_json

    rep = parity_report(tokenizer, aligned)
    rep["aligned_set"] = str(aligned) if not isinstance(aligned, dict) else "in-memory"
    rep["parity_dev"] = parity_dev if parity_dev is not None else steering_dev_set(tokenizer)
    out = Path(out_dir)
    write_json(out / "parity.json", rep)
    plot_parity({name: rep}, out / "parity.png")
    return rep
