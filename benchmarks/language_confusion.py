"""Language confusion of a run's chat model against its own base model: does it answer in the language it is asked in?

    vernacular speedrun                                       # leaves runs/speedrun with an SFT checkpoint
    python benchmarks/language_confusion.py --run-dir runs/speedrun [--max-tokens 32] [--json out.json]
    python benchmarks/language_confusion.py --run-dir runs/speedrun --tatoeba 40   # + 40 Tatoeba questions per language

The measure is the Language Confusion Benchmark's line-level pass rate (Marchisio et al., 2024) with its rules
(`vernacular.sft.confusion`: lines of 5+ words, each identified as the question's language by py3langid restricted
to the 24 EU languages; answers without such a line are not scored; averaged over languages), and next to it the
share of all answers whose every line is in the question's language. Questions: the opening turns of the held-out demo conversations in all 24 languages, split exactly as
`vernacular sft` split them (`vernacular.sft.data.load_conversations`). Both sides answer greedily through the
serving engine: the base model (the run's newest pretraining checkpoint) and the chat model (its newest SFT
checkpoint), same tokenizer, same prompts; the script prints both pass rates, per language, and their ratio.

The held-out demo questions are few (6 per language: one answer moves a language's rate by 17 points), so
`--tatoeba N` adds a second, larger set: the first N questions per language (lines ending in `?`, 15 characters or
more, file order; `;` for Greek) of the Tatoeba sentences in `../shared/corpora/tatoeba/<lang>.txt` (CC BY 2.0 FR,
written by Tatoeba's contributors; never trained on by Vernacular), asked as single user turns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/speedrun")
    parser.add_argument("--max-tokens", type=int, default=32, help="greedy answer length (default: 32, as sft)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--tatoeba", type=int, default=0, metavar="N",
                        help="also ask N Tatoeba questions per language (needs ../shared/corpora/tatoeba)")
    parser.add_argument("--corpora", default=str(Path(__file__).resolve().parents[2] / "shared" / "corpora"))
    args = parser.parse_args()

    from vernacular.run import RunDir
    from vernacular.sft.confusion import language_confusion
    from vernacular.sft.data import default_sources, expand_sources, load_conversations
    from vernacular.tokenizer import load
    from vernacular.train.checkpoint import latest_checkpoint

    run = RunDir(args.run_dir)
    sft = run.read_config().get("sft")
    base, chat = latest_checkpoint(run.checkpoints), latest_checkpoint(run.sft_checkpoints)
    if sft is None or base is None or chat is None:
        print(f"error: {run.root} has no pretraining and SFT checkpoints: run `vernacular speedrun` first",
              file=sys.stderr)
        return 1
    sources = expand_sources(sft["data"]) if sft.get("data") else default_sources()
    seq_len = int(sft.get("seq_len", 512))
    ds = load_conversations(sources, load(run.tokenizer), max_tokens=seq_len + 1,
                            val_fraction=float(sft.get("val_fraction", 0.1)))
    everything = {}
    question_sets = {"demo held-out": ds.val}
    if args.tatoeba:
        question_sets[f"tatoeba {args.tatoeba}/lang"] = tatoeba_questions(Path(args.corpora) / "tatoeba", args.tatoeba)
    for set_name, questions in question_sets.items():
        results = {}
        for name, ckpt in (("base (pretrained)", base), ("chat (SFT)", chat)):
            results[name] = language_confusion(ckpt, run.tokenizer, questions, max_tokens=args.max_tokens)
            results[name]["checkpoint"] = str(ckpt)
        print(f"\n== {set_name} questions")
        report(results, args.max_tokens)
        everything[set_name] = results
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=2) + "\n", encoding="utf-8")
    return 0


def tatoeba_questions(folder: Path, n: int) -> list:
    """The first n Tatoeba questions (a line ending in `?`, or Greek `;`, 15+ characters) of each EU language, as
    single-turn `Conversation`s (`language_confusion` reads only `messages`, `lang` and `tools`)."""
    from vernacular.data.languages import EU_LANGUAGES
    from vernacular.sft.data import Conversation

    if not folder.is_dir():
        raise SystemExit(f"error: no Tatoeba sentences in {folder} (give --corpora)")
    out = []
    for lang in EU_LANGUAGES:
        lines = (folder / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        marks = ("?", ";", "\u037e") if lang == "ell" else ("?",)  # Greek asks with `;`
        questions = [q for q in (line.strip() for line in lines) if q.endswith(marks) and len(q) >= 15][:n]
        out += [Conversation([{"role": "user", "content": q}], "tatoeba", lang, [], []) for q in questions]
    return out


def report(results: dict, max_tokens: int) -> None:
    langs = sorted({lang for r in results.values() for lang in r["per_language"]})
    answers = next(iter(results.values()))["answers"]
    print(f"language confusion, line-level pass rate: {answers} questions, {len(langs)} languages, "
          f"greedy {max_tokens} tokens")
    print(f"{'language':10s}" + "".join(f"{name:>20s}" for name in results))
    for lang in langs:
        print(f"{lang:10s}" + "".join(f"{100 * r['per_language'][lang]:19.0f}%" if lang in r["per_language"]
                                      else f"{'- (none scored)':>20s}" for r in results.values()))
    rates = [r["line_level_pass_rate"] or 0.0 for r in results.values()]
    print(f"{'all':10s}" + "".join(f"{100 * x:19.1f}%" for x in rates))
    print(f"{'scored':10s}" + "".join(f"{r['answers_scored']:>16d}/{r['answers']:<3d}" for r in results.values()))
    print(f"{'whole':10s}" + "".join(f"{100 * r['response_pass_rate']:19.1f}%" for r in results.values())
          + "   (every line in the question's language, all answers)")
    print(f"ratio chat / base: {rates[1] / rates[0]:.2f}x" if rates[0] else "ratio chat / base: base passes none")


if __name__ == "__main__":
    sys.exit(main())
