"""The European language set: ISO 639-3 codes (our product's codes) and the ISO 639-1 codes libraries expect.

One table, so that file names (`deu.txt`), record fields (`de`, `deu`), hub config names (`deu_Latn`) and the
language identifier (`de`) all resolve to the same code.
"""

from __future__ import annotations

# iso639-3 -> (iso639-1, English name, EU official language)
LANGUAGES: dict[str, tuple[str, str, bool]] = {
    "bul": ("bg", "Bulgarian", True),
    "ces": ("cs", "Czech", True),
    "dan": ("da", "Danish", True),
    "deu": ("de", "German", True),
    "ell": ("el", "Greek", True),
    "eng": ("en", "English", True),
    "spa": ("es", "Spanish", True),
    "est": ("et", "Estonian", True),
    "fin": ("fi", "Finnish", True),
    "fra": ("fr", "French", True),
    "gle": ("ga", "Irish", True),
    "hrv": ("hr", "Croatian", True),
    "hun": ("hu", "Hungarian", True),
    "ita": ("it", "Italian", True),
    "lit": ("lt", "Lithuanian", True),
    "lav": ("lv", "Latvian", True),
    "mlt": ("mt", "Maltese", True),
    "nld": ("nl", "Dutch", True),
    "pol": ("pl", "Polish", True),
    "por": ("pt", "Portuguese", True),
    "ron": ("ro", "Romanian", True),
    "slk": ("sk", "Slovak", True),
    "slv": ("sl", "Slovenian", True),
    "swe": ("sv", "Swedish", True),
    "nob": ("nb", "Norwegian Bokmål", False),
    "nno": ("nn", "Norwegian Nynorsk", False),
    "isl": ("is", "Icelandic", False),
    "cat": ("ca", "Catalan", False),
    "eus": ("eu", "Basque", False),
    "ukr": ("uk", "Ukrainian", False),
}

EU_LANGUAGES: tuple[str, ...] = tuple(code for code, (_, _, eu) in LANGUAGES.items() if eu)
ALL_LANGUAGES: tuple[str, ...] = tuple(LANGUAGES)

# aliases seen in the wild -> iso639-3 (FineWeb-2 uses `deu_Latn`, HPLT `deu_Latn` too, older sets `lvs`, `nor`)
_ALIASES: dict[str, str] = {"lvs": "lav", "ekk": "est", "nor": "nob", "no": "nob", "gre": "ell", "ger": "deu",
                            "fre": "fra", "dut": "nld", "cze": "ces", "slo": "slk", "rum": "ron", "ice": "isl",
                            "baq": "eus"}
_BY_ISO1: dict[str, str] = {iso1: code for code, (iso1, _, _) in LANGUAGES.items()}

# py3langid labels differ from ISO 639-1 for Norwegian Bokmål (`no`)
LANGID_LABEL: dict[str, str] = {code: ("no" if iso1 == "nb" else iso1) for code, (iso1, _, _) in LANGUAGES.items()}


def to_iso639_3(value: str | None) -> str | None:
    """Resolve `deu`, `de`, `de-AT`, `deu_Latn`, `DEU` to `deu`; None when it is not a language we know."""
    if not value:
        return None
    v = str(value).strip().lower().replace("-", "_")
    head = v.split("_")[0]
    for candidate in (v, head):
        if candidate in LANGUAGES:
            return candidate
        if candidate in _ALIASES:
            return _ALIASES[candidate]
        if candidate in _BY_ISO1:
            return _BY_ISO1[candidate]
    return None


def from_langid_label(label: str) -> str | None:
    return "nob" if label == "no" else to_iso639_3(label)
