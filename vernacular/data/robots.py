"""robots.txt with RFC 9309 semantics, for text-and-data-mining opt-outs.

`urllib.robotparser` applies the first rule that matches, in file order, and does not support `*`/`$` patterns; RFC
9309 says the *longest* matching rule wins (Allow on a tie) and defines both wildcards. Publishers write their AI
opt-outs (`User-agent: GPTBot / Disallow: /`, often next to `Allow:` exceptions) with those semantics in mind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

# crawlers whose exclusion signals a text-and-data-mining / AI-training opt-out
AI_USER_AGENTS: tuple[str, ...] = ("GPTBot", "CCBot", "Google-Extended", "ClaudeBot", "anthropic-ai",
                                   "Applebot-Extended", "PerplexityBot", "Bytespider", "Meta-ExternalAgent",
                                   "cohere-ai", "Diffbot", "Omgilibot", "Amazonbot")


def _normalize_path(path: str) -> str:
    """Percent-encoding normalized the same way on rules and URLs (RFC 9309 2.2.2)."""
    return quote(unquote(path), safe="/*$?=&;:@!+,%~")


@dataclass
class Rule:
    allow: bool
    pattern: str
    regex: re.Pattern = field(init=False, repr=False)

    def __post_init__(self):
        pat = _normalize_path(self.pattern)
        anchored = pat.endswith("$")
        body = pat[:-1] if anchored else pat
        self.regex = re.compile("".join(".*" if ch == "*" else re.escape(ch) for ch in body) + ("$" if anchored else ""))

    def matches(self, path: str) -> bool:
        return self.regex.match(path) is not None


@dataclass
class RobotsTxt:
    groups: dict[str, list[Rule]]  # lower-case product token -> rules (groups with the same token are merged)

    @classmethod
    def parse(cls, text: str) -> "RobotsTxt":
        groups: dict[str, list[Rule]] = {}
        agents: list[str] = []
        in_rules = False
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if ":" not in line:
                continue
            key, value = (s.strip() for s in line.split(":", 1))
            key = key.lower()
            if key == "user-agent":
                if in_rules:  # a user-agent line after rules starts a new group
                    agents, in_rules = [], False
                agents.append(value.lower())
                groups.setdefault(value.lower(), [])
            elif key in ("allow", "disallow"):
                in_rules = True
                if not value:  # an empty Disallow allows everything: no rule
                    continue
                for agent in agents:
                    groups[agent].append(Rule(key == "allow", value))
        return cls(groups)

    def _rules_for(self, user_agent: str) -> list[Rule]:
        ua = user_agent.lower()
        if ua in self.groups:
            return self.groups[ua]
        return self.groups.get("*", [])

    def can_fetch(self, user_agent: str, url: str) -> bool:
        parts = urlsplit(url)
        path = _normalize_path(parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if path.endswith("/robots.txt"):
            return True
        best: Rule | None = None
        for rule in self._rules_for(user_agent):
            if rule.matches(path):
                longer = best is None or len(rule.pattern) > len(best.pattern)
                tie_allow = best is not None and len(rule.pattern) == len(best.pattern) and rule.allow
                if longer or tie_allow:
                    best = rule
        return best is None or best.allow

    def opted_out(self, url: str, agents: tuple[str, ...] = AI_USER_AGENTS) -> str | None:
        """The first AI crawler this URL is disallowed for, or None."""
        for agent in agents:
            if not self.can_fetch(agent, url):
                return agent
        return None


def domain_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower().removeprefix("www.")


def in_blocklist(domain: str, blocklist: frozenset[str]) -> bool:
    """A listed domain blocks itself and all its subdomains."""
    parts = domain.split(".")
    return any(".".join(parts[i:]) in blocklist for i in range(len(parts)))


def read_blocklist(path: str) -> frozenset[str]:
    with open(path, encoding="utf-8") as f:
        return frozenset(line.split("#", 1)[0].strip().lower().removeprefix("www.")
                         for line in f if line.split("#", 1)[0].strip())
