"""robots.txt with RFC 9309 semantics, for text-and-data-mining opt-outs, and the list of AI crawlers they name.

`urllib.robotparser` applies the first rule that matches, in file order, and does not support `*`/`$` patterns; RFC
9309 says the *longest* matching rule wins (Allow on a tie) and defines both wildcards. Publishers write their AI
opt-outs (`User-agent: GPTBot / Disallow: /`, often next to `Allow:` exceptions) with those semantics in mind.

The AI crawler product tokens are data, not code: `ai_robots/robots.json` from the community list
https://github.com/ai-robots-txt/ai.robots.txt (MIT, `ai_robots/LICENSE`; commit and date in `ai_robots/SOURCE.json`).
A disallow for any of them, or for the lab's own crawler (`--crawler-name`), is an opt-out. Update the list with
`python -m vernacular.data.robots update` (downloads the newest robots.json) or `... update --from PATH` (a robots.json
file or a git checkout of the repository, e.g. fetched on a machine with internet).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

AGENTS_DIR = Path(__file__).resolve().parent / "ai_robots"
REPOSITORY = "ai-robots-txt/ai.robots.txt"


@dataclass(frozen=True)
class AgentList:
    """AI crawler product tokens (robots.txt `User-agent` values) and where the list came from."""

    agents: tuple[str, ...]
    source: dict  # name, repository, file, commit, commit_date, licence, retrieved

    def record(self) -> dict:
        """For the manifest (the AI Act training-data summary names the opt-out signals honoured)."""
        return {k: self.source.get(k) for k in ("name", "repository", "commit", "commit_date", "licence",
                                                "retrieved")} | {"agents": len(self.agents)}


def load_ai_agents(folder: str | Path = AGENTS_DIR) -> AgentList:
    """The shipped list: `robots.json` (token -> operator, function, ...) and `SOURCE.json`."""
    folder = Path(folder)
    agents = json.loads((folder / "robots.json").read_text(encoding="utf-8"))
    return AgentList(tuple(agents), json.loads((folder / "SOURCE.json").read_text(encoding="utf-8")))


# crawlers whose exclusion signals a text-and-data-mining / AI-training opt-out
AI_USER_AGENTS: tuple[str, ...] = load_ai_agents().agents


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
        """The first of `agents` with its own group that may not fetch this URL, else `*` when the catch-all group
        disallows it for the agents without a group of their own; None when every agent may fetch it."""
        named = [a for a in agents if a.lower() in self.groups]
        for agent in named:
            if not self.can_fetch(agent, url):
                return agent
        if len(named) < len(agents) and not self.can_fetch("*", url):
            return "*"
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


def update_agents(source: str | None = None, folder: str | Path = AGENTS_DIR) -> AgentList:
    """Replace the shipped list: `source` is a robots.json file or a git checkout of ai.robots.txt; None downloads
    robots.json and the current commit of the repository's main branch from GitHub."""
    today = dt.date.today().isoformat()
    if source is None:
        from urllib.request import urlopen

        with urlopen(f"https://api.github.com/repos/{REPOSITORY}/commits/main", timeout=30) as r:
            info = json.load(r)
        commit, date = info["sha"], info["commit"]["committer"]["date"][:10]
        with urlopen(f"https://raw.githubusercontent.com/{REPOSITORY}/{commit}/robots.json", timeout=30) as r:
            raw = r.read()
    else:
        path = Path(source)
        commit = date = None
        if path.is_dir():
            git = ["git", "-C", str(path)]
            commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
            date = subprocess.run([*git, "log", "-1", "--format=%cs"], capture_output=True, text=True,
                                  check=True).stdout.strip()
            path = path / "robots.json"
        raw = path.read_bytes()
    agents = json.loads(raw)
    if not isinstance(agents, dict) or not agents or not all(isinstance(k, str) and k.strip() for k in agents):
        raise ValueError(f"{source or 'download'}: expected ai.robots.txt's robots.json (an object keyed by user agent)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "robots.json").write_bytes(raw)
    meta = {"name": "ai.robots.txt", "repository": f"https://github.com/{REPOSITORY}", "file": "robots.json",
            "commit": commit, "commit_date": date, "licence": "MIT", "licence_file": "LICENSE", "retrieved": today,
            "update": "python -m vernacular.data.robots update [--from FILE_OR_GIT_CHECKOUT]"}
    (folder / "SOURCE.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return load_ai_agents(folder)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vernacular.data.robots",
                                 description="Show or update the shipped list of AI crawler user agents.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("show", help="the list's source, commit and size")
    up = sub.add_parser("update", help="replace the list with a newer robots.json from ai.robots.txt")
    up.add_argument("--from", dest="source", default=None, metavar="PATH",
                    help="a robots.json file or a git checkout of ai.robots.txt (default: download from GitHub)")
    up.add_argument("--folder", default=str(AGENTS_DIR), help="where the list lives (default: the package's)")
    args = ap.parse_args(argv)
    if args.command == "show":
        print(json.dumps(load_ai_agents().record(), indent=1))
        return 0
    old = load_ai_agents(args.folder).agents if (Path(args.folder) / "robots.json").exists() else ()
    new = update_agents(args.source, args.folder)
    added, removed = sorted(set(new.agents) - set(old)), sorted(set(old) - set(new.agents))
    print(f"{len(new.agents)} agents at commit {new.source['commit']} ({new.source['commit_date']}); "
          f"added {added or 'none'}, removed {removed or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
