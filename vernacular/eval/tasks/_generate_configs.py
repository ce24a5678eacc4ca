"""Write the per-language task YAMLs of the offline tasks (as lm-eval's own `_generate_configs.py` scripts do).

    python vernacular/eval/tasks/_generate_configs.py

Sizes are per language, chosen so the whole offline suite runs in about 2 minutes on 2 CPU cores for the tiny preset;
the same `SEED` picks the same sentences in every language.
"""

from __future__ import annotations

from pathlib import Path

from vernacular.eval.groups import GROUPS

HERE = Path(__file__).resolve().parent
SEED = 1234
SIZES = {"flores-200": 40, "flores-200-choice": 16, "sib200-eu": 20}
TEMPLATES = {"flores-200": "_flores200_bpb_yaml", "flores-200-choice": "_flores200_choice_yaml",
             "sib200-eu": "_sib200_yaml"}  # fmt: skip


def main() -> None:
    for old in HERE.glob("*.yaml"):
        old.unlink()
    for name, template in TEMPLATES.items():
        group = GROUPS[name]
        for lang in group.languages:
            task = group.task(lang)
            (HERE / f"{task}.yaml").write_text(
                f"include: {template}\ntask: {task}\n"
                f"dataset_kwargs:\n  lang: {lang}\n  n: {SIZES[name]}\n  seed: {SEED}\n",
                encoding="utf-8",
            )


if __name__ == "__main__":
    main()
