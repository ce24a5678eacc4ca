"""The data pipeline as datatrove stages, and the executors that run them.

    decont_index   n-gram index of the evaluation texts (each task indexes every N-th file; empty when there are none)
    filter         readers -> input counter -> normalize -> quarantine -> language id -> quality -> TDM opt-out
                   -> decontamination -> work/filtered/<rank>.jsonl, MinHash signatures (batched), exact-dedup
                   signatures
    exact_find     datatrove ExactFindDedups (1 task)
    minhash_sigs   the MinHash signatures without the exact duplicates, as datatrove's stage-1 bucket files
    minhash_buckets, minhash_cluster   datatrove MinhashDedupBuckets / MinhashDedupCluster
    final          ExactDedupFilter -> MinhashDedupFilter -> PII redaction -> train/val split
                   -> text/<split>/<lang>/<rank>.jsonl.gz

Dedup needs a global view, so the pipeline is a chain of stages (datatrove's usual dedup recipe). `build_pipeline`
returns one stage's steps; `make_executors` chains all stages with `depends=` for the Local, Slurm or Ray executor.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vernacular.data.languages import ALL_LANGUAGES
from vernacular.run import RunDir, read_json, write_json

# evaluation texts shipped by the eval stage (one text per line); decontaminated against by default
EVAL_DATA_DIR = Path(__file__).resolve().parents[1] / "eval" / "data"

STAGES: tuple[str, ...] = ("decont_index", "filter", "exact_find", "minhash_sigs", "minhash_buckets",
                           "minhash_cluster", "final")


@dataclass
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["demo"])
    licence: str | None = None  # applies to sources without their own (else the known-licence table)
    collected: str | None = None  # collection date (ISO); default today
    text_field: str = "text"
    txt_mode: str = "line"
    hf_split: str = "train"
    hf_streaming: bool = True
    languages: tuple[str, ...] = ALL_LANGUAGES
    lid_min_declared_prob: float = 0.2
    lid_min_confidence: float = 0.5
    lang_thresholds: str | None = None  # TOML file of per-language quality thresholds
    max_doc_bytes: int = 1_000_000
    robots: list[str] = field(default_factory=list)  # DOMAIN=FILE
    blocklist: str | None = None
    crawler_name: str | None = None  # the lab's own crawler: a disallow for it is an opt-out too
    decontaminate: list[str] = field(default_factory=list)  # more eval sets: .txt files or folders of them
    decontaminate_default: bool = True  # every *.txt under vernacular/eval/data/
    decont_ngrams: int = 8
    minhash_ngrams: int = 5
    minhash_buckets: int = 14
    minhash_hashes_per_bucket: int = 8
    val_fraction: float = 0.05
    min_val_docs: int = 1  # per language, taken from train when the split hash left fewer
    alpha: float = 0.3
    seed: int = 0
    tasks: int = 2
    workers: int = 2
    progress: bool = True


def _work(run: RunDir) -> Path:
    return run.data / "work"


def resolve_sources(cfg: DataConfig):
    from vernacular.data.sources import parse_source

    specs = []
    for spec in cfg.sources:
        specs.extend(parse_source(spec, licence=cfg.licence, collected=cfg.collected, text_field=cfg.text_field,
                                  txt_mode=cfg.txt_mode, hf_split=cfg.hf_split, hf_streaming=cfg.hf_streaming))
    names = [s.name for s in specs]
    if len(set(zip(names, (s.kind for s in specs)))) != len(specs):
        raise ValueError(f"two sources share a name: {names}; give one `::name=...`")
    return specs


def eval_files(cfg: DataConfig) -> list[tuple[str, str]]:
    """(task, path) of every evaluation text file to decontaminate against: `vernacular/eval/data/**/*.txt` (task =
    path without `.txt` relative to that folder, e.g. `flores200/deu`) unless disabled, plus each --decontaminate
    PATH (a .txt file, or a folder searched for *.txt; task = `<folder name>/<relative path>`)."""
    roots = [(EVAL_DATA_DIR, "")] if cfg.decontaminate_default and EVAL_DATA_DIR.is_dir() else []
    roots += [(Path(p), Path(p).name + "/") for p in cfg.decontaminate]
    out = {}
    for root, prefix in roots:
        if root.is_file():
            out[f"{root.parent.name}/{root.stem}"] = str(root.resolve())
        elif root.is_dir():
            for f in sorted(root.rglob("*.txt")):
                out[prefix + f.relative_to(root).with_suffix("").as_posix()] = str(f.resolve())
        else:
            raise FileNotFoundError(f"--decontaminate {str(root)!r} does not exist")
    return sorted(out.items())


def ai_agents(cfg: DataConfig) -> tuple[str, ...]:
    from vernacular.data.robots import AI_USER_AGENTS

    return ((cfg.crawler_name,) if cfg.crawler_name else ()) + AI_USER_AGENTS


def _robots(cfg: DataConfig) -> dict[str, str]:
    out = {}
    for item in cfg.robots:
        domain, sep, path = item.partition("=")
        if not sep:  # FILE named after its site: zeitung.example.de.txt or zeitung.example.de.robots.txt
            path = item
            domain = Path(item).name.removesuffix(".txt").removesuffix(".robots")
        if "." not in domain or not Path(path).is_file():
            raise ValueError(f"--robots expects DOMAIN=FILE or a file named <domain>.txt, got {item!r}")
        out[domain.strip()] = Path(path).read_text(encoding="utf-8")
    return out


def _minhash_config(cfg: DataConfig):
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    # 64-bit xxHash shingles (datatrove's default hash), computed by steps.MinhashSignatures on UTF-8 bytes
    return MinhashConfig(n_grams=cfg.minhash_ngrams, num_buckets=cfg.minhash_buckets,
                         hashes_per_bucket=cfg.minhash_hashes_per_bucket, seed=cfg.seed + 1,
                         hash_config=HashConfig(precision=64, hash_fc="xxhash"))


def _exact_config():
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
    from datatrove.utils.hashing import HashConfig

    from vernacular.data.steps import doc_text

    # sha1 (hashlib) rather than datatrove's default xxhash: no extra dependency, and str input works
    return ExactDedupConfig(content_getter=doc_text, hash_config=HashConfig(precision=64, hash_fc="sha1"))


def build_pipeline(cfg: DataConfig, run_dir: str | RunDir, stage: str = "filter") -> list:
    """The datatrove steps of one stage (see the module docstring); hand them to any datatrove executor."""
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    from vernacular.data.robots import read_blocklist
    from vernacular.data.sources import make_reader
    from vernacular.data.steps import (
        Decontaminate,
        EvalNGramIndexer,
        InputCounter,
        LanguageFilter,
        MinhashBucketFiles,
        MinhashSignatures,
        Normalize,
        OptOutFilter,
        PIIRedactor,
        QualityFilter,
        Quarantine,
        RankJsonlReader,
        RejectWriter,
        SplitAssigner,
        document_dict,
        kept_writer,
        load_thresholds,
    )

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    work, rejects = _work(run), str(run.rejects)
    if stage == "decont_index":
        return [EvalNGramIndexer(eval_files(cfg), str(work / "decont"), cfg.decont_ngrams)]
    if stage == "filter":
        readers = [make_reader(s, progress=cfg.progress) for s in resolve_sources(cfg)]
        decont = ([Decontaminate(str(work / "decont"), cfg.decont_ngrams,
                                 exclusion_writer=RejectWriter(rejects, "decontamination", "contaminated"))]
                  if eval_files(cfg) else [])
        return [
            *readers,
            InputCounter(str(work / "counts")),
            Normalize(),
            Quarantine(cfg.max_doc_bytes, exclusion_writer=RejectWriter(rejects, "quarantine")),
            LanguageFilter(cfg.languages, cfg.lid_min_declared_prob, cfg.lid_min_confidence,
                           exclusion_writer=RejectWriter(rejects, "language")),
            QualityFilter(load_thresholds(cfg.lang_thresholds), exclusion_writer=RejectWriter(rejects, "quality")),
            OptOutFilter(_robots(cfg), read_blocklist(cfg.blocklist) if cfg.blocklist else frozenset(),
                         agents=ai_agents(cfg), exclusion_writer=RejectWriter(rejects, "optout")),
            *decont,
            JsonlWriter(str(work / "filtered"), output_filename="${rank}.jsonl", compression=None,
                        adapter=document_dict),
            MinhashSignatures(str(work / "minhash" / "all"), config=_minhash_config(cfg)),
            ExactDedupSignature(str(work / "exact" / "sigs"), config=_exact_config()),
        ]
    if stage == "exact_find":
        return [ExactFindDedups(str(work / "exact" / "sigs"), str(work / "exact" / "dups"), config=_exact_config())]
    if stage == "minhash_sigs":
        return [MinhashBucketFiles(str(work / "minhash" / "all"), str(work / "exact" / "dups"),
                                   str(work / "minhash" / "sigs"), config=_minhash_config(cfg))]
    if stage == "minhash_buckets":
        return [MinhashDedupBuckets(str(work / "minhash" / "sigs"), str(work / "minhash" / "buckets"),
                                    config=_minhash_config(cfg))]
    if stage == "minhash_cluster":
        return [MinhashDedupCluster(str(work / "minhash" / "buckets"), str(work / "minhash" / "remove"),
                                    config=_minhash_config(cfg))]
    if stage == "final":
        return [
            RankJsonlReader(str(work / "filtered")),
            ExactDedupFilter(str(work / "exact" / "dups"), config=_exact_config(),
                             exclusion_writer=RejectWriter(rejects, "exact-dedup", "exact-duplicate")),
            MinhashDedupFilter(str(work / "minhash" / "remove"),
                               exclusion_writer=RejectWriter(rejects, "near-dedup", "near-duplicate")),
            PIIRedactor(),
            SplitAssigner(cfg.val_fraction, cfg.seed),
            kept_writer(str(run.text)),
        ]
    raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")


def stage_tasks(cfg: DataConfig, stage: str) -> int:
    single = {"exact_find": 1, "minhash_cluster": 1, "minhash_buckets": cfg.minhash_buckets}
    return single.get(stage, cfg.tasks)


def make_executors(cfg: DataConfig, run_dir: str | RunDir, executor: str = "local", **executor_kwargs) -> list:
    """One executor per stage, chained with `depends=`: `executor` is local | slurm | ray; extra kwargs go to every
    executor (e.g. `partition=`, `time=` for Slurm). Run the last one: datatrove launches its dependencies first."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if executor == "local":
        from datatrove.executor import LocalPipelineExecutor as cls
    elif executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor as cls
    elif executor == "ray":
        from datatrove.executor import RayPipelineExecutor as cls
    else:
        raise ValueError(f"executor must be local, slurm or ray, got {executor!r}")
    out, prev = [], None
    for stage in STAGES:
        tasks = stage_tasks(cfg, stage)
        kwargs = dict(pipeline=build_pipeline(cfg, run, stage), tasks=tasks,
                      logging_dir=str(_work(run) / "logs" / stage), depends=prev, **executor_kwargs)
        if executor == "local":
            kwargs["workers"] = max(1, min(cfg.workers, tasks))
            kwargs["start_method"] = "fork"  # workers inherit the loaded modules (forkserver re-imports them per stage)
        elif executor == "slurm":
            kwargs.setdefault("job_name", f"vernacular-data-{stage}")
        prev = cls(**kwargs)
        out.append(prev)
    return out


# settings that do not change the output: a run may be resumed with other values
_NOT_OUTPUT = ("tasks", "workers", "progress")


def run_pipeline(cfg: DataConfig, run_dir: str | RunDir, resume: bool = False) -> dict:
    """Run every stage locally into RunDir(run_dir).data, then write the provenance manifest and return it.

    Fresh (default): previous text/rejects/work/tokens are replaced. `resume=True`: keep them and let datatrove skip
    every task that has its completion record (`work/logs/<stage>/completions/<rank>`); the tasks that had not
    finished run again and overwrite their partial files, so the output equals an uninterrupted run's. The settings
    that shape the output must be those of the interrupted run (checked against `work/config.json`)."""
    from vernacular.data.manifest import build_manifest
    from vernacular.data.sources import check_hub_sources

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    check_hub_sources(resolve_sources(cfg))  # fail fast on a bad --source or an unreachable hub, before any work
    eval_files(cfg)
    record = {k: v for k, v in config_record(cfg).items() if k not in _NOT_OUTPUT}
    saved = _work(run) / "config.json"
    if resume:
        if not saved.is_file():
            raise FileNotFoundError(f"nothing to resume in {run.data}: no {saved.name} from an earlier run")
        if (old := read_json(saved)) != record:
            diff = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            raise ValueError(f"--resume: settings differ from the interrupted run's ({', '.join(diff)}); "
                             "rerun with the same settings or without --resume")
    else:
        for path in (run.text, run.rejects, _work(run), run.tokens):
            shutil.rmtree(path, ignore_errors=True)
        write_json(saved, record)
    run.data.mkdir(parents=True, exist_ok=True)
    executors = make_executors(cfg, run, "local")
    timings, skipped = {}, {}
    for stage, executor in zip(STAGES, executors):  # in order, so each stage's time is known
        skipped[stage] = executor.world_size - len(executor.get_incomplete_ranks())
        t0 = time.perf_counter()
        executor.run()
        timings[stage] = round(time.perf_counter() - t0, 3)
    from vernacular.data.text import ensure_val_documents

    moved = ensure_val_documents(run, cfg.seed, cfg.min_val_docs)
    manifest = build_manifest(run, cfg, timings)
    manifest["val_documents_moved_from_train"] = moved
    if resume:
        manifest["resumed"] = {"completed_tasks_skipped": skipped}
    write_json(run.manifest, manifest)
    for done in ("filtered", "minhash/all"):  # intermediate text and signatures, read by later stages only
        shutil.rmtree(_work(run) / done, ignore_errors=True)
    return manifest


def config_record(cfg: DataConfig) -> dict:
    rec = asdict(cfg)
    rec["languages"] = list(cfg.languages)
    return rec
