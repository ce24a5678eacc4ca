"""Personal data in text: e-mail addresses, public IP addresses (v4 and v6), IBANs and phone numbers.

`find_pii(text, lang)` returns the matches; the pipeline's `PIIRedactor` (a datatrove formatter) replaces them with
`<email-pii>`, `<ip-pii>`, `<iban-pii>`, `<phone-pii>`. Each kind is a cheap candidate regex followed by a validator,
tuned against the false positives that web and news text is full of:

- e-mail: the domain must end in a letter TLD, so package specifiers (`python@3.11`, `lodash@4.17.21`) are not
  addresses;
- IP: `ipaddress` must accept it as a *global* address (datatrove's PIIFormatter rule: private, loopback and
  documentation ranges are not personal); dotted version and section numbers are excluded by shape (a fifth
  component, `v`/`[`/`-` around it) and by a version/section word just before it (`version 1.2.3.4`, `§ 1.2.3.4`);
- IBAN: ISO 13616 mod-97 checksum and the country's IBAN length (SWIFT IBAN registry);
- phone: Google's libphonenumber (`phonenumbers`) must accept the number as valid for the international prefix it
  carries, else for a country of the document's language (a number written without `+`/`00` or trunk `0` also needs
  a phone word such as `Tel.` before it); dates, year ranges and ISBNs are excluded.

Sources: RFC 5322 (simplified), RFC 4291 / `ipaddress`, ISO 13616, ITU-T E.164 via libphonenumber.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import phonenumbers

# ISO 639-3 -> regions whose national phone formats a document in that language is likely to use
LANG_REGIONS: dict[str, tuple[str, ...]] = {
    "bul": ("BG",), "ces": ("CZ",), "dan": ("DK",), "deu": ("DE", "AT", "CH", "LU", "BE"), "ell": ("GR", "CY"),
    "eng": ("GB", "IE", "MT"), "spa": ("ES",), "est": ("EE",), "fin": ("FI",), "fra": ("FR", "BE", "LU", "CH"),
    "gle": ("IE",), "hrv": ("HR",), "hun": ("HU",), "ita": ("IT", "CH"), "lit": ("LT",), "lav": ("LV",),
    "mlt": ("MT",), "nld": ("NL", "BE"), "pol": ("PL",), "por": ("PT",), "ron": ("RO",), "slk": ("SK",),
    "slv": ("SI",), "swe": ("SE", "FI"), "nob": ("NO",), "nno": ("NO",), "isl": ("IS",), "cat": ("ES", "AD"),
    "eus": ("ES",), "ukr": ("UA",),
}
ALL_REGIONS: tuple[str, ...] = tuple(dict.fromkeys(r for rs in LANG_REGIONS.values() for r in rs))

# IBAN length per country (SWIFT IBAN registry), for the countries of Europe and its neighbours
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AT": 20, "BA": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GI": 23, "GL": 18, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
    "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MT": 31,
    "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "RS": 22, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26,
    "UA": 29, "VA": 22, "XK": 20,
}

EMAIL = re.compile(r"(?<![\w.%+-])[\w%+-]+(?:\.[\w%+-]+)*@(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,24}(?![\w@-])")
_DIGIT = re.compile(r"\d")
# cheap searches without look-arounds that every accepted match contains: most documents skip the full regex
_IBAN_HINT = re.compile(r"[A-Z]{2}\d\d")
_IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")  # an address `ipaddress` accepts has two colons this close
_PHONE_HINT = re.compile(r"\d(?:[ .\-/]?\d){6}")
IPV4 = re.compile(r"(?<![\w.@/-])(?:\d{1,3}\.){3}\d{1,3}(?![\w-]|\.\d)")
IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:)[0-9A-Fa-f:]{3,39}(?![\w:]|\.\w)")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
PHONE = re.compile(r"(?<![\w+@/.:,-])(?:(?:\+|00)[1-9]\d{0,2}(?: ?\(0\))?[ .-]?|\(0?\d{1,5}\)[ .-]?)?"
                   r"\d(?:[ .\-/]?\d){6,14}(?![\w@]|[.,:/-]\d)")

# a word just before (or after) a dotted number that makes it a version or a section, not an address
_VERSION_BEFORE = re.compile(
    r"(?:\b(?:vers\w*|verz\w*|wersj\w*|έκδοσ\w*|верси\w*|release|build|firmware|update|patch|rev|v|sec(?:tion)?|"
    r"abschnitt|art(?:icle|ikel|ículo|icolo|igo|ykuł)?|chap(?:ter|itre)|kapitel|clause|ziffer|nr|no|punkt|kohta|"
    r"isbn|doi)|§+)[\s:.]*$", re.IGNORECASE)
_VERSION_AFTER = re.compile(r"^(?:-?\w{0,3}\s)?\s*(?:vers\w*|verz\w*|wersj\w*|release)\b", re.IGNORECASE)
_ISBN_BEFORE = re.compile(r"isbn(?:-1[03])?[\s:]*$", re.IGNORECASE)
# words that announce a phone number (needed for numbers without +/00 or a trunk 0)
_PHONE_WORDS = re.compile(
    r"\b(?:tel|tlf|phone|telefon|téléphone|tél|teléfono|telefono|telefone|telefoon|telemóvel|puhelin|puh|τηλ|тел|"
    r"mobil|handy|cell|fax|gsm|portable|móvil|cellulare|kom|komórka|call|ring|ruf|appel|llam|chiam|ligue|bel|hívj|"
    r"helista|soita|zadzwoń|zavolej|volejte|sunați|καλέστε|κλήση|kontakt|contact|hotline|numer|number|nummer|"
    r"numéro|número|numero|numeroon)", re.IGNORECASE)
_DATE = re.compile(r"^\(?\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\)?$|^\d{4}\s?[-/–]\s?\d{2,4}$")


@dataclass(frozen=True)
class PIIMatch:
    kind: str  # email | ip | iban | phone
    start: int
    end: int
    text: str


def iban_valid(candidate: str) -> bool:
    """ISO 13616: the country's length, then move the first four characters to the end, letters to numbers
    (A=10 ... Z=35), and the number mod 97 must be 1."""
    s = candidate.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    if IBAN_LENGTHS.get(s[:2], len(s)) != len(s):
        return False
    digits = "".join(str(int(ch, 36)) for ch in s[4:] + s[:4])
    return int(digits) % 97 == 1


def _before(text: str, start: int, width: int = 40) -> str:
    return text[max(0, start - width):start]


def ip_valid(text: str, m: re.Match) -> bool:
    candidate = m.group(0)
    try:
        if not ipaddress.ip_address(candidate).is_global:
            return False
    except ValueError:
        return False
    if ":" in candidate:
        return True
    before, after = text[max(0, m.start() - 1):m.start()], text[m.end():m.end() + 1]
    if before == "[" and after == "]":  # [1.84.1.0]: a version in brackets (an IPv4 host in a URL has none)
        return False
    return not (_VERSION_BEFORE.search(_before(text, m.start(), 24))
                or _VERSION_AFTER.match(text[m.end():m.end() + 16]))


def phone_valid(text: str, m: re.Match, lang: str | None) -> bool:
    candidate = m.group(0).strip()
    before = _before(text, m.start())
    if _DATE.match(candidate) or _ISBN_BEFORE.search(before[-12:]):
        return False
    international = candidate.startswith(("+", "00"))
    if international:
        regions: tuple[str | None, ...] = (None,)
        candidate = "+" + candidate[2:] if candidate.startswith("00") else candidate
    else:
        regions = LANG_REGIONS.get(lang or "", ALL_REGIONS)
        trunk = candidate.lstrip("(").startswith("0")
        if not trunk and not _PHONE_WORDS.search(before[-32:]):
            return False
    n_digits = sum(ch.isdigit() for ch in candidate)
    if not 7 <= n_digits <= 15:
        return False
    for region in regions:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


def find_pii(text: str, lang: str | None = None) -> list[PIIMatch]:
    """Non-overlapping matches in text order; e-mails first, then IBANs, IPs, phone numbers (a span taken by an
    earlier kind is not matched again, so an IBAN's digit groups are not also a phone number).

    `lang`: the document's ISO 639-3 code; it picks the countries whose national phone formats are tried."""
    found: list[PIIMatch] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, m: re.Match) -> None:
        if any(a < m.end() and m.start() < b for a, b in taken):
            return
        found.append(PIIMatch(kind, m.start(), m.end(), m.group(0)))
        taken.append(m.span())

    if "@" in text:
        for m in EMAIL.finditer(text):
            add("email", m)
    # IBANs, IPv4 addresses and phone numbers need a digit, IPv6 addresses two colons: most text has no digit
    digits = _DIGIT.search(text) is not None
    for m in IBAN.finditer(text) if digits and _IBAN_HINT.search(text) else ():
        if iban_valid(m.group(0)):
            add("iban", m)
        else:  # a failed IBAN's digit groups are no phone number either
            taken.append(m.span())
    for regex, hint in ((IPV4, _IPV4_HINT),) * digits + ((IPV6, _IPV6_HINT),) * (text.count(":") >= 2):
        for m in regex.finditer(text) if hint.search(text) else ():
            if ip_valid(text, m):
                add("ip", m)
    for m in PHONE.finditer(text) if digits and _PHONE_HINT.search(text) else ():
        if phone_valid(text, m, lang):
            add("phone", m)
    return sorted(found, key=lambda p: p.start)


PLACEHOLDERS = {"email": "<email-pii>", "ip": "<ip-pii>", "iban": "<iban-pii>", "phone": "<phone-pii>"}


def redact(text: str, lang: str | None = None) -> tuple[str, dict[str, int]]:
    """(text with every match replaced by its placeholder, {kind: count})."""
    matches = find_pii(text, lang)
    counts: dict[str, int] = {}
    out, pos = [], 0
    for p in matches:
        out += [text[pos:p.start], PLACEHOLDERS[p.kind]]
        pos = p.end
        counts[p.kind] = counts.get(p.kind, 0) + 1
    out.append(text[pos:])
    return "".join(out), counts
