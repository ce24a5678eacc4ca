"""`vernacular compliance`: the EU AI Act documents of a run, generated from its own records.

    vernacular compliance --init-provider provider.toml      # a provider file to fill in
    vernacular compliance --run-dir runs/speedrun --provider provider.toml
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", help="run directory (after data, tokenizer, pretrain [, sft, eval])")
    parser.add_argument("--provider", help="provider TOML (name, contact, model name, release date, licence, ...)")
    parser.add_argument("--init-provider", metavar="PATH", help="write an empty provider file to fill in, then exit")


def write_documents(run_dir, provider_path=None) -> dict:
    """Write the public summary (.md/.json), Annex XI documentation (.md/.json) and copyright policy into report/.
    Returns {"paths": [...], "missing": [...]}."""
    from vernacular.compliance.documents import (
        copyright_policy,
        load_provider,
        public_summary,
        technical_documentation,
        to_markdown,
    )
    from vernacular.compliance.records import collect
    from vernacular.run import atomic_write_bytes, write_json

    rec = collect(run_dir)
    provider, missing = load_provider(provider_path)
    run = rec.run
    paths = []
    for stem, doc, title in (
        (run.training_content_summary, public_summary(rec, provider, missing), "Public summary of training content"),
        (run.technical_documentation, technical_documentation(rec, provider, missing),
         "Technical documentation (AI Act Annex XI)"),
    ):
        write_json(stem.with_suffix(".json"), doc)
        atomic_write_bytes(stem.with_suffix(".md"), to_markdown(doc, title).encode())
        paths += [stem.with_suffix(".md"), stem.with_suffix(".json")]
    atomic_write_bytes(run.copyright_policy, copyright_policy(rec, provider).encode())
    paths.append(run.copyright_policy)
    run.record_stage("compliance", {"provider": str(provider_path or ""), "missing": missing})
    return {"paths": paths, "missing": missing}


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vernacular.compliance.documents import PROVIDER_TEMPLATE

    if args.init_provider:
        path = Path(args.init_provider)
        if path.exists():
            print(f"error: {path} exists; not overwriting it", file=sys.stderr)
            return 2
        path.write_text(PROVIDER_TEMPLATE, encoding="utf-8")
        print(f"wrote {path}: fill it in, then run `vernacular compliance --run-dir DIR --provider {path}`")
        return 0
    if not args.run_dir:
        print("error: --run-dir is required (or --init-provider PATH)", file=sys.stderr)
        return 2
    try:
        result = write_documents(args.run_dir, args.provider)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in result["paths"]:
        print(f"wrote {p}")
    if result["missing"]:
        print("missing provider information (listed as MISSING in the documents, never invented): "
              + ", ".join(result["missing"]) + ("" if args.provider else
                                                "\n  create a provider file with `vernacular compliance --init-provider provider.toml`"),
              file=sys.stderr)
    return 0
