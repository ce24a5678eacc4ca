"""`vernacular eval`: lm-evaluation-harness on a run's checkpoint, in-process, with European task groups.

    vernacular eval --run-dir runs/speedrun                          # the offline suite shipped with the package
    vernacular eval --run-dir R --tasks belebele-eu-5-shot,xcopa     # lm-eval's own tasks (datasets downloaded)
    vernacular eval --run-dir R --tasks sib200-eu --languages deu,fra --limit 20

Writes `metrics/eval.json` (per-task scores, the aggregate, lm-eval's results) and prints a per-language table.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="run directory (its latest checkpoint unless --checkpoint)")
    parser.add_argument("--tasks", default="offline",
                        help="comma-separated task groups or suites (default: offline = flores-200, "
                             "flores-200-choice, sib200-eu); `--tasks list` shows them")  # fmt: skip
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder, step folder name or step number")
    parser.add_argument("--languages", default=None, help="comma-separated languages (ISO 639-3 or 639-1) to keep")
    parser.add_argument("--limit", type=int, default=None, help="at most N documents per task (for quick checks)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward (default: 32)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0, help="seed of lm-eval's few-shot sampling (default: 0)")


def _list_groups() -> None:
    from vernacular.eval.groups import GROUPS, SUITES

    for name, members in SUITES.items():
        print(f"{name:22s} suite: {', '.join(members)}")
    for g in GROUPS.values():
        where = "shipped, offline" if g.offline else "downloads " + ", ".join(g.datasets)
        print(f"{g.name:22s} {g.template:36s} {len(g.languages):2d} languages, {g.metric}; {where}")


def evaluate(run_dir: str, tasks: str = "offline", checkpoint: str | None = None, languages: list[str] | None = None,
             limit: int | None = None, batch_size: int = 32, device: str = "cpu", dtype: str = "float32",
             seed: int = 0, lm=None) -> dict:  # fmt: skip
    """Run the resolved tasks through lm-eval with `VernacularLM` (or `lm`, any lm-eval LM), write
    `metrics/eval.json` and return its content. Raises ValueError for unknown groups/languages, SystemExit when an
    online dataset is unavailable."""
    import logging
    from collections import defaultdict

    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    from vernacular.eval.aggregate import aggregate, task_rows
    from vernacular.eval.groups import TASKS_DIR, check_online, resolve
    from vernacular.eval.lm import VernacularLM
    from vernacular.run import RunDir, write_json

    resolved = resolve(tasks, languages)
    if not resolved:
        raise ValueError(f"no task of {tasks!r} covers the languages {languages}")
    check_online(resolved)
    # custom_dataset tasks warn once per task about --metadata; that is lm-eval talking to its own CLI users
    logging.getLogger("lm_eval.api.task").setLevel(logging.ERROR)
    online = any(not t.group.offline for t in resolved)
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=online)
    own = lm is None
    if own:
        lm = VernacularLM(run_dir=run_dir, checkpoint=checkpoint, batch_size=batch_size, device=device, dtype=dtype)
    by_shots: dict[int | None, list[str]] = defaultdict(list)
    for t in resolved:
        by_shots[t.group.num_fewshot].append(t.task)
    results: dict = {"results": {}, "n-samples": {}, "versions": {}, "n-shot": {}}
    config = None
    try:
        for shots, names in by_shots.items():  # one lm-eval call per few-shot setting (groups differ)
            out = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=shots, task_manager=manager, limit=limit,
                                          log_samples=False, bootstrap_iters=100, random_seed=seed,
                                          numpy_random_seed=seed, torch_random_seed=seed,
                                          fewshot_random_seed=seed)  # fmt: skip
            for key in results:
                results[key].update(out.get(key, {}))
            config = out.get("config")
    finally:
        if own:
            lm.close()
    for name, res in results["results"].items():
        n = results["n-samples"].get(name, {})
        res["samples"] = n.get("effective")
    rows = task_rows(resolved, results["results"])
    summary = {
        "checkpoint": str(getattr(lm, "checkpoint", checkpoint)),
        "tasks": rows,
        "aggregate": aggregate(rows),
        "limit": limit,
        "lm_eval": {"version": lm_eval.__version__, "config": config, **results},
    }
    run = RunDir(run_dir)
    write_json(run.eval_results, json_safe(summary, handle_non_serializable))
    run.record_stage("eval", {"tasks": tasks, "languages": languages, "limit": limit, "checkpoint": checkpoint,
                              "batch_size": batch_size, "device": device, "dtype": dtype, "seed": seed})  # fmt: skip
    return summary


def json_safe(obj, fallback):
    """Replace what JSON cannot hold (NaN, functions in lm-eval configs) by strings."""
    import math

    if isinstance(obj, dict):
        return {str(k): json_safe(v, fallback) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, fallback) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return fallback(obj)


def main(args: argparse.Namespace) -> int:
    if args.tasks == "list":
        _list_groups()
        return 0
    from vernacular.eval.aggregate import format_table
    from vernacular.train.checkpoint import CheckpointError

    languages = [c for c in args.languages.split(",") if c.strip()] if args.languages else None
    try:
        summary = evaluate(args.run_dir, args.tasks, args.checkpoint, languages, args.limit, args.batch_size,
                           args.device, args.dtype, args.seed)  # fmt: skip
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    agg = summary["aggregate"]
    print()
    print(format_table(summary["tasks"], agg))
    parts = []
    if agg["centred"] is not None:
        parts.append(f"centred accuracy {100 * agg['centred']:+.1f} (x100; 0 = chance, 100 = perfect)")
    if agg["bpb"] is not None:
        parts.append(f"mean FLORES bpb {agg['bpb']:.4f}")
    from vernacular.run import RunDir

    print("\n" + "; ".join(parts) + f"\nresults: {RunDir(args.run_dir).eval_results}")
    return 0
