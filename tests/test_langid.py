"""Language ID quality on FLORES (evaluation only): per-language accuracy of our LanguageFilter's identifier on the
sentences of the 24 official EU languages, with the production setting (restricted to the 30 European languages)."""

from __future__ import annotations

from pathlib import Path

from datatrove.data import Document

from vernacular.data.languages import ALL_LANGUAGES, EU_LANGUAGES
from vernacular.data.steps import LanguageFilter

FLORES = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "flores200-sib"


def accuracy_table() -> dict[str, float]:
    lid = LanguageFilter(ALL_LANGUAGES)
    table = {}
    for lang in EU_LANGUAGES:
        lines = (FLORES / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        table[lang] = sum(lid.predict(line)[0][0] == lang for line in lines) / len(lines)
    return table


def test_flores_accuracy_eu24():
    table = accuracy_table()
    mean = sum(table.values()) / len(table)
    print("\n".join(f"{lang} {acc:.4f}" for lang, acc in table.items()), f"\nmean {mean:.4f}")
    assert len(table) == 24
    assert mean >= 0.97
    assert min(table.values()) >= 0.95, table


def test_declared_language_check_on_flores():
    """The filter keeps FLORES sentences under their true language and flags them under a wrong one."""
    lid = LanguageFilter(ALL_LANGUAGES)
    de = (FLORES / "deu.txt").read_text(encoding="utf-8").splitlines()[:50]
    assert all(lid.filter(Document(text=t, id="x", metadata={"lang": "deu"})) is True for t in de)
    assert all(lid.filter(Document(text=t, id="x", metadata={"lang": "fin"})) == (False, "lang-mismatch") for t in de)
    undeclared = Document(text=de[0], id="x", metadata={"lang": None})
    assert lid.filter(undeclared) is True and undeclared.metadata["lang"] == "deu"
    assert lid.filter(Document(text=de[0], id="x", metadata={"lang": "deu"})) is True
    narrow = LanguageFilter(("eng", "fra"))
    assert narrow.filter(Document(text=de[0], id="x", metadata={"lang": "deu"})) == (False, "lang-unsupported")
