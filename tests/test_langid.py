"""Language ID quality on real sentences: per-language accuracy of our LanguageFilter's identifier on the held-out
NTREX-128 articles of the embedded corpus in the 24 official EU languages, with the production setting (restricted to
the 30 European languages)."""

from __future__ import annotations

from datatrove.data import Document

from vernacular.data.languages import ALL_LANGUAGES, EU_LANGUAGES
from vernacular.data.steps import LanguageFilter

from corpus_fixtures import demo_lines


def accuracy_table() -> dict[str, float]:
    lid = LanguageFilter(ALL_LANGUAGES)
    table = {}
    for lang in EU_LANGUAGES:
        lines = demo_lines(lang, "val")
        table[lang] = sum(lid.predict(line)[0][0] == lang for line in lines) / len(lines)
    return table


def test_heldout_accuracy_eu24():
    table = accuracy_table()
    mean = sum(table.values()) / len(table)
    print("\n".join(f"{lang} {acc:.4f}" for lang, acc in table.items()), f"\nmean {mean:.4f}")
    assert len(table) == 24
    assert mean >= 0.97
    assert min(table.values()) >= 0.95, table


def test_declared_language_check():
    """The filter keeps real German sentences under their true language and flags them under a wrong one."""
    lid = LanguageFilter(ALL_LANGUAGES)
    de = demo_lines("deu", "val")[:50]
    assert all(lid.filter(Document(text=t, id="x", metadata={"lang": "deu"})) is True for t in de)
    assert all(lid.filter(Document(text=t, id="x", metadata={"lang": "fin"})) == (False, "lang-mismatch") for t in de)
    undeclared = Document(text=de[0], id="x", metadata={"lang": None})
    assert lid.filter(undeclared) is True and undeclared.metadata["lang"] == "deu"
    assert lid.filter(Document(text=de[0], id="x", metadata={"lang": "deu"})) is True
    narrow = LanguageFilter(("eng", "fra"))
    assert narrow.filter(Document(text=de[0], id="x", metadata={"lang": "deu"})) == (False, "lang-unsupported")


def test_vectorized_features_and_scores_equal_py3langid():
    """`vernacular.data.langid` finds py3langid's features without its byte-by-byte DFA walk: the counts (in the
    Counter's order) and the ranked probabilities must be identical, one text at a time and in mixed batches."""
    import random

    from py3langid.langid import MODEL_FILE, LanguageIdentifier, visit_counts

    from vernacular.data.langid import identifier
    from vernacular.data.languages import LANGID_LABEL

    ref = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ref.set_languages(sorted({LANGID_LABEL[c] for c in ALL_LANGUAGES}))
    fast = identifier(ALL_LANGUAGES)
    rng = random.Random(0)
    texts = [line for lang in EU_LANGUAGES for line in demo_lines(lang, "val")[:40]]
    texts += ["", "a", "ab", "a", "HELLO WORLD", "ÄÖÜ ß", "\x00\xff"]
    texts += [bytes(rng.randrange(256) for _ in range(rng.randrange(40))).decode("latin-1") for _ in range(200)]
    texts += [" ".join(rng.sample(texts[:900], 12)) for _ in range(20)]  # long, mixed languages
    rng.shuffle(texts)
    encoded = [ref._encode(t) for t in texts]
    for b, (ids, counts) in zip(encoded, fast.feature_counts(encoded), strict=True):
        visits = visit_counts(ref.tk_nextmove, ref._rowbase, ref.tk_output, b) or {}
        assert list(visits) == ids.tolist() and list(visits.values()) == counts.tolist()
    expected = [ref.rank(t) for t in texts]
    assert [fast.rank(t) for t in texts] == expected
    batched = [r for i in range(0, len(texts), 97) for r in fast.rank_batch(texts[i:i + 97])]
    assert batched == expected


def test_cached_identifier_equals_the_built_one(tmp_path):
    """The identifier saved to and loaded from the cache (no pickle, no byte DFA) scores exactly as the one built
    from py3langid's model."""
    from py3langid.langid import MODEL_FILE

    from vernacular.data.langid import VectorizedIdentifier
    from vernacular.data.languages import LANGID_LABEL

    built = VectorizedIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    built.set_languages(sorted({LANGID_LABEL[c] for c in ALL_LANGUAGES}))
    built.save(tmp_path / "ident.npz")
    loaded = VectorizedIdentifier.load(tmp_path / "ident.npz")
    texts = [line for lang in EU_LANGUAGES for line in demo_lines(lang, "val")[:10]] + ["", "1 2 3", "ÄÖÜ"]
    assert loaded.nb_classes == built.nb_classes
    assert loaded.rank_batch(texts) == built.rank_batch(texts)
    assert [loaded.classify(t) for t in texts] == [built.classify(t) for t in texts]
