"""PII detection: the labelled multilingual set (precision >= 0.98, recall >= 0.95), the false positives datatrove's
PIIFormatter makes, and redaction counts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vernacular.data.pii import find_pii, iban_valid, redact

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("pii_bench", ROOT / "benchmarks" / "pii.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_labelled_set_precision_and_recall():
    bench = _bench()
    rows = bench.load()
    assert len(rows) >= 100 and len({r[0] for r in rows}) >= 10
    res = bench.score(bench.ours, rows)
    assert res["all"]["precision"] >= 0.98 and res["all"]["recall"] >= 0.95, res["errors"]
    for kind in ("email", "ip", "iban", "phone"):
        assert res[kind]["tp"] > 0, kind
    # the peer on its own scope (e-mails, IPs) is far less precise on the same lines
    assert bench.score(bench.datatrove, rows, ("email", "ip"))["all"]["precision"] < 0.9


def test_issue_false_positives_are_gone():
    for text in ("version 1.2.3.4", "see [1.84.1.0]", "v2.10.3.1 is out", "pip install python@3.11",
                 "ISBN 978-3-16-148410-0", "am 30.11.2026", "§ 4.1.2.3 gilt"):
        assert find_pii(text, "deu") == [], text


def test_redaction_counts_and_checksums():
    text, counts = redact("Mail anna.k@firma.example.at, IP 141.20.5.3, intern 192.168.0.1, "
                          "IBAN GB82 WEST 1234 5698 7654 32, Tel. +33 1 42 68 53 00 oder 030 12345678.", "deu")
    assert text == ("Mail <email-pii>, IP <ip-pii>, intern 192.168.0.1, IBAN <iban-pii>, Tel. <phone-pii> oder "
                    "<phone-pii>.")
    assert counts == {"email": 1, "ip": 1, "iban": 1, "phone": 2}
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_valid("DE89 3704 0044 0532 0130 0")  # wrong length for Germany


def test_hints_only_skip_documents_without_matches(monkeypatch):
    """The cheap pre-searches (`_*_HINT`) never change the result: the same matches with every hint disabled, on
    the labelled lines, on those lines joined into documents, and on random digit/colon/letter strings."""
    import random
    import re

    from vernacular.data import pii

    rng = random.Random(0)
    rows = _bench().load()
    texts = [t for _, t, _ in rows] + [" ".join(t for _, t, _ in rows[i:i + 7]) for i in range(0, len(rows), 7)]
    alphabet = "0123456789 .-/:+()@abcdefDEIT"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(60))) for _ in range(3000)]
    langs = [lang for lang, _, _ in rows] * 40
    with_hints = [find_pii(t, lang) for t, lang in zip(texts, langs)]
    for name in ("_IBAN_HINT", "_IPV4_HINT", "_IPV6_HINT", "_PHONE_HINT"):
        monkeypatch.setattr(pii, name, re.compile(""))  # matches everywhere: the full regex always runs
    assert [find_pii(t, lang) for t, lang in zip(texts, langs)] == with_hints
    assert sum(map(len, with_hints)) > 100
