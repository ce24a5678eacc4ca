"""Task groups named as in OpenEuroLLM's `oellm-eval`, resolved per language to lm-eval task names.

lm-eval names its per-language tasks with three kinds of code: FLORES-200 codes (`belebele_deu_Latn`), ISO 639-1
(`global_mmlu_full_de`, `xcopa_et`, `arc_challenge_mt_de`) and English names (`include_base_44_german`). `LM_EVAL_CODES`
is the one alias table from our ISO 639-3 codes (`vernacular.data.languages`) to those; each group lists the languages
for which lm-eval 0.4.13 has the task (checked against its task registry in tests/test_eval.py).

Offline groups (`flores-200`, `flores-200-choice`, `sib200-eu`) are shipped in `vernacular/eval/tasks/` with their
data; online groups download their datasets as lm-eval does, and `check_online` fails at once, in one line, when a
dataset is neither cached nor reachable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vernacular.data.languages import EU_LANGUAGES, LANGUAGES

TASKS_DIR = Path(__file__).resolve().parent / "tasks"

# ISO 639-3 -> FLORES-200 code (language_Script), the code of belebele and of FLORES itself. Standard Latvian is `lvs`.
FLORES_CODES: dict[str, str] = {
    code: f"{'lvs' if code == 'lav' else code}_{ {'bul': 'Cyrl', 'ukr': 'Cyrl', 'ell': 'Grek'}.get(code, 'Latn')}"
    for code in LANGUAGES
}


def lm_eval_codes(lang: str) -> dict[str, str]:
    """The codes lm-eval uses for one language: {"flores": "deu_Latn", "iso1": "de", "name": "german"}."""
    iso1, name, _ = LANGUAGES[lang]
    return {"flores": FLORES_CODES[lang], "iso1": iso1, "name": name.lower()}


LM_EVAL_CODES: dict[str, dict[str, str]] = {lang: lm_eval_codes(lang) for lang in LANGUAGES}


@dataclass(frozen=True)
class Group:
    """A task family over languages. `template` formats with a language's `LM_EVAL_CODES` entry.

    `metric` is the score the aggregate uses (`acc`, `acc_norm` or `bits_per_byte`), `chance` its chance level
    (None for bpb). `datasets` are the Hugging Face datasets of online groups (empty for shipped ones)."""

    name: str
    template: str
    languages: tuple[str, ...]
    metric: str
    chance: float | None
    num_fewshot: int | None = None
    datasets: tuple[str, ...] = ()
    description: str = ""

    @property
    def offline(self) -> bool:
        return not self.datasets

    def task(self, lang: str) -> str:
        return self.template.format(**LM_EVAL_CODES[lang])


def _langs(*codes: str) -> tuple[str, ...]:
    return tuple(c for c in LANGUAGES if c in codes)  # table order


EU_NO_GLE = tuple(c for c in EU_LANGUAGES if c != "gle")
EU_NON_ENGLISH = tuple(c for c in EU_LANGUAGES if c != "eng")

GROUPS: dict[str, Group] = {g.name: g for g in [
    # shipped, offline (vernacular/eval/tasks)
    Group("flores-200", "flores200_bpb_{flores}", EU_LANGUAGES, "bits_per_byte", None,
          description="bits per byte on FLORES-200 sentences (rolling log-likelihood)"),
    Group("flores-200-choice", "flores200_choice_eng_Latn-{flores}", EU_NON_ENGLISH, "acc_norm", 0.25,
          description="pick the translation of an English FLORES-200 sentence among 4"),
    Group("sib200-eu", "sib200_{flores}", EU_LANGUAGES, "acc", 1 / 7,
          description="SIB-200 topic classification of FLORES-200 sentences (7 topics)"),
    # lm-eval's own tasks, downloaded from the Hugging Face Hub
    Group("belebele-eu-5-shot", "belebele_{flores}", EU_NO_GLE, "acc", 0.25, 5, ("facebook/belebele",),
          "Belebele reading comprehension, 5-shot"),
    Group("global-mmlu-eu", "global_mmlu_full_{iso1}",
          _langs("ces", "deu", "ell", "eng", "spa", "fra", "ita", "lit", "nld", "pol", "por", "ron", "swe"), "acc", 0.25,
          5, ("CohereForAI/Global-MMLU",), "Global-MMLU, 5-shot"),
    Group("include", "include_base_44_{name}",
          _langs("bul", "deu", "ell", "spa", "est", "fin", "fra", "hrv", "hun", "ita", "lit", "nld", "pol", "por"),
          "acc", 0.25, 0, ("CohereForAI/include-base-44",), "INCLUDE regional-knowledge exams, 0-shot"),
    Group("xcopa", "xcopa_{iso1}", _langs("est", "ita"), "acc", 0.5, 0, ("cambridgeltl/xcopa",)),
    Group("xstorycloze", "xstorycloze_{iso1}", _langs("eng", "spa"), "acc", 0.5, 0, ("juletxara/xstory_cloze",)),
    Group("xwinograd", "xwinograd_{iso1}", _langs("eng", "fra", "por"), "acc", 0.5, 0, ("Muennighoff/xwinograd",)),
    Group("arc-challenge-mt-eu", "arc_challenge_mt_{iso1}",
          _langs("dan", "deu", "ell", "spa", "fin", "hun", "ita", "pol", "por", "swe"), "acc_norm", 0.25, 0,
          ("LumiOpen/arc_challenge_mt",), "ARC-Challenge machine-translated"),
]}  # fmt: skip

# named suites: the default (everything shipped) and OpenEuroLLM's generic multilingual trio
SUITES: dict[str, tuple[str, ...]] = {
    "offline": ("flores-200", "flores-200-choice", "sib200-eu"),
    "generic-multilingual": ("xcopa", "xstorycloze", "xwinograd"),
}


@dataclass(frozen=True)
class ResolvedTask:
    task: str  # lm-eval task name
    group: Group
    lang: str  # ISO 639-3


def resolve(names: list[str] | str, languages: list[str] | None = None) -> list[ResolvedTask]:
    """Group / suite names (comma-separated or a list) -> lm-eval tasks, one per language.

    `languages` (ISO 639-3, or any code `to_iso639_3` knows) restricts every group to those languages.
    Raises ValueError naming the unknown group or language."""
    from vernacular.data.languages import to_iso639_3

    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    wanted = None
    if languages:
        wanted = set()
        for code in languages:
            iso3 = to_iso639_3(code)
            if iso3 is None:
                raise ValueError(f"unknown language {code!r}; known: {', '.join(LANGUAGES)}")
            wanted.add(iso3)
    groups: list[Group] = []
    for name in names:
        name = name.strip()
        members = SUITES.get(name, (name,))
        for member in members:
            if member not in GROUPS:
                raise ValueError(f"unknown task group {name!r}; known: {', '.join([*SUITES, *GROUPS])}")
            if GROUPS[member] not in groups:
                groups.append(GROUPS[member])
    return [ResolvedTask(g.task(lang), g, lang) for g in groups for lang in g.languages
            if wanted is None or lang in wanted]  # fmt: skip


def _in_cache(repo: str) -> bool:
    from huggingface_hub.constants import HF_HUB_CACHE

    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(HF_HUB_CACHE).parent / "datasets"))
    return (Path(HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}").is_dir() or (
        datasets_cache / repo.replace("/", "___")
    ).is_dir()


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))  # fmt: skip


def check_online(tasks: list[ResolvedTask], timeout: float = 10.0) -> None:
    """Raise SystemExit with one line naming the first dataset of an online group that is neither in the local
    Hugging Face cache nor reachable on the Hub (instead of lm-eval's retries and long traceback)."""
    seen = set()
    for t in tasks:
        for repo in t.group.datasets:
            if repo in seen or _in_cache(repo):
                continue
            seen.add(repo)
            if _offline():
                reason = "offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set) and not in the local cache"
            else:
                try:
                    from huggingface_hub import HfApi

                    HfApi().dataset_info(repo, timeout=timeout)
                    continue
                except Exception as e:  # noqa: BLE001 - any failure means: cannot download it now
                    reason = f"not in the local cache and the Hub cannot be reached ({type(e).__name__})"
            raise SystemExit(f"error: task group {t.group.name} needs the dataset {repo}: {reason}")
