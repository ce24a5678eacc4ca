"""`vernacular data --resume`: a run whose worker was killed mid-stage continues from datatrove's completion records
and gives the same output as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from vernacular.data.manifest import iter_jsonl_gz
from vernacular.data.text import iter_records
from vernacular.run import RunDir, read_json

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "ntrex-sample"  # NTREX news, CC BY-SA 4.0

# runs `vernacular data` in this process; the task of rank 1 in the `final` stage SIGKILLs its own process (the
# worker: with --workers 1 datatrove runs the tasks in the main process) on its first document
KILLER = """
import os, signal, sys
from vernacular.data import steps
original = steps.SplitAssigner.run
def run(self, data, rank=0, world_size=1):
    for doc in original(self, data, rank, world_size):
        if rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        yield doc
steps.SplitAssigner.run = run
from vernacular.cli import main
sys.exit(main(["data", *sys.argv[1:]]))
"""


def outputs(run_dir: Path) -> tuple:
    rd = RunDir(run_dir)
    kept = sorted((split, r["id"], r["text"], r["metadata"]["lang"]) for split in ("train", "val")
                  for _, r in iter_records(rd, split))
    rejects = sorted((r["metadata"]["location"], r["metadata"]["reason"]) for r in iter_jsonl_gz(rd.rejects))
    return kept, rejects


def vernacular_data(tmp_path: Path, *args: str, script: str | None = None) -> tuple[int, str]:
    """(exit status, stderr). Output goes to files: helper processes of a killed run (datatrove's multiprocess
    Manager) outlive it and would hold inherited pipes open."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-c", script] if script else [sys.executable, "-m", "vernacular", "data"]
    with open(tmp_path / "out.log", "w") as out, open(tmp_path / "err.log", "w") as err:
        proc = subprocess.Popen([*cmd, *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=600)
        finally:  # a killed run leaves datatrove's multiprocess Manager process behind: end its process group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return rc, (tmp_path / "err.log").read_text()[-3000:]


def test_resume_after_a_killed_worker_equals_an_uninterrupted_run(tmp_path):
    args = ["--source", str(SAMPLE), "--tasks", "2", "--workers", "1", "--no-progress", "--no-default-decontamination"]
    rc, err = vernacular_data(tmp_path, "--run-dir", str(tmp_path / "crashed"), *args, script=KILLER)
    assert rc == -signal.SIGKILL, err
    logs = tmp_path / "crashed" / "data" / "work" / "logs"
    assert sorted(p.name for p in (logs / "final" / "completions").iterdir()) == ["00000"]  # rank 1 died
    assert not (tmp_path / "crashed" / "data" / "manifest.json").exists()

    rc, err = vernacular_data(tmp_path, "--run-dir", str(tmp_path / "crashed"), *args, "--resume")
    assert rc == 0, err
    skipped = read_json(tmp_path / "crashed" / "data" / "manifest.json")["resumed"]["completed_tasks_skipped"]
    assert skipped == {"decont_index": 2, "filter": 2, "exact_find": 1, "minhash_sigs": 2, "minhash_buckets": 14,
                       "minhash_cluster": 1, "final": 1}

    rc, err = vernacular_data(tmp_path, "--run-dir", str(tmp_path / "fresh"), *args)
    assert rc == 0, err
    assert outputs(tmp_path / "crashed") == outputs(tmp_path / "fresh")
    a, b = (read_json(tmp_path / d / "data" / "manifest.json") for d in ("crashed", "fresh"))
    assert a["totals"] == b["totals"] and a["sources"] == b["sources"] and a["totals"]["documents_kept"] > 400

    rc, err = vernacular_data(tmp_path, "--run-dir", str(tmp_path / "fresh"), *args, "--resume", "--seed", "3")
    assert rc == 2 and "settings differ" in err and "seed" in err
