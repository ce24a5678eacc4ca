"""CPU speedrun: our recipe (MoE + MLA + MTP + Muon + WSD) against a dense GPT-2 (AdamW + cosine), equal wall clock.

    python benchmarks/speedrun_cpu.py --minutes 10 --threads 2            # the recorded comparison
    python benchmarks/speedrun_cpu.py --tune --tune-minutes 2             # the LR sweep, NTREX held-out only
    python benchmarks/speedrun_cpu.py --minutes 5 --sequential            # one side after the other instead

Both sides train on the same NTREX-128 text (all 30 languages), through the same tokenizer (trained by our tokenizer
stage on that text), with the same batches in the same order (the data stage's TokenLoader), the same batch size,
sequence length, warmup, clipping and seed. Ours is `vernacular.train.train` on the tiny preset: the product's own
trainer, not a copy. The baseline (benchmarks/gpt2_baseline.py) has as many parameters as ours has *active* ones.

The measure is FLORES-200 bits per byte (never trained on), on the same aligned sentences in every language, averaged
over the 30 languages. Ours saves a checkpoint at regular step intervals, the baseline a snapshot at regular time
intervals; every one is evaluated after training, outside the budget, by the same function, so the curves cost no
training time. The x axis is each side's summed optimizer-step time (what the budget buys), so the checkpoint writes
ours pays inside its budget are not counted as learning time, but they do shorten its run: a handicap against ours.

Why the two sides run concurrently, 1 thread each, by default: the machine is shared and its load changes from minute
to minute; running side by side exposes both to the same contention at every moment, whereas one after the other
compares a quiet window with a busy one. `--sequential` gives each side all threads in turn instead.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpt2_baseline when run as a script or a subprocess


@dataclass
class SideSpec:
    """Everything one side's worker process needs; written as JSON so the worker is a plain subprocess."""
    side: str  # ours | baseline
    prep: str  # prepared run directory (data/tokens, tokenizer)
    out: str  # this side's output folder
    lr: float
    minutes: float
    threads: int
    batch_size: int = 8
    seq_len: int = 256
    warmup: int = 5
    points: int = 8  # checkpoints/snapshots along the run (plus the untrained model at t=0)
    seed: int = 0
    preset: str = "tiny"
    flores_lines: int = 50  # first N aligned FLORES sentences per language (the same sentences everywhere)
    measure: str = "flores"  # flores (the benchmark) | ntrex-val (tuning: NTREX held-out only)
    eval_batches: int = 1  # ntrex-val: batches per language, as the trainer's own validation


# ----------------------------------------------------------------------------------------------- data preparation

def _ntrex_split(val_docs: float, seed: int) -> tuple[list[int], list[int]]:
    """Line indices of NTREX train / held-out val: whole news documents (the same in every language) are held out,
    so no translation of a val sentence is trained on in another language."""
    ids = (CORPORA / "ntrex128" / "DOCUMENT_IDS.tsv").read_text(encoding="utf-8").splitlines()
    docs = sorted(set(ids))
    held = set(random.Random(seed).sample(docs, max(1, round(len(docs) * val_docs))))
    train = [i for i, d in enumerate(ids) if d not in held]
    val = [i for i, d in enumerate(ids) if d in held]
    return train, val


def prepare(prep: Path, vocab_size: int, seed: int) -> Path:
    """NTREX text in the data stage's layout, then our tokenizer stage (which trains on the train split and writes
    the token shards). Cached: a second run with the same settings reuses it."""
    from vernacular.run import RunDir, read_json, write_json

    run = RunDir(prep)
    key = {"vocab_size": vocab_size, "seed": seed, "corpus": "ntrex128", "val_docs": 0.1}
    marker = prep / "prepared.json"
    if marker.exists() and read_json(marker) == key and run.tokens.exists():
        return prep
    if not (CORPORA / "ntrex128").is_dir():
        raise SystemExit(f"NTREX-128 not found at {CORPORA / 'ntrex128'} (see ../shared/corpora/README.md)")
    train_idx, val_idx = _ntrex_split(0.1, seed)
    files = sorted((CORPORA / "ntrex128").glob("*.txt"))
    for path in files:  # text/<split>/<lang>/<rank>.jsonl.gz, one document per line (the data stage's line mode)
        lines = path.read_text(encoding="utf-8").splitlines()
        for split, idx in (("train", train_idx), ("val", val_idx)):
            out = run.text / split / path.stem / "00000.jsonl.gz"
            out.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(out, "wt", encoding="utf-8") as f:
                for i in idx:
                    if lines[i].strip():
                        f.write(json.dumps({"text": lines[i], "id": f"ntrex/{path.stem}/{i}",
                                            "metadata": {"source": "ntrex128"}}, ensure_ascii=False)
                                + "\n")
    print(f"prepared NTREX text: {len(files)} languages, {len(train_idx)} train / {len(val_idx)} held-out lines each",
          flush=True)
    _cli(["tokenizer", "--run-dir", str(prep), "--vocab-size", str(vocab_size), "--seed", str(seed), "--quiet"])
    if not run.tokens.exists():
        raise SystemExit(f"the tokenizer stage wrote no shards into {run.tokens}")
    write_json(marker, key)
    return prep


def _cli(argv: list[str]) -> None:
    print("$ vernacular " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "vernacular", *argv], check=True)


# ----------------------------------------------------------------------------------------------- measurement

def flores_windows(tokenizer_json: Path, lines: int, seq_len: int) -> dict[str, tuple]:
    """Per language: FLORES sentences framed BOS ... EOS as the shards frame documents, packed into non-overlapping
    (seq_len + 1)-token windows, and the UTF-8 bytes per token of that text."""
    import torch
    from tokenizers import Tokenizer

    from vernacular.tokenizer import BOS_ID, EOS_ID

    tok = Tokenizer.from_file(str(tokenizer_json))
    out = {}
    for path in sorted((CORPORA / "flores200-sib").glob("*.txt")):
        sents = [s for s in path.read_text(encoding="utf-8").splitlines()[:lines] if s.strip()]
        ids = [t for enc in tok.encode_batch(sents, add_special_tokens=False) for t in (BOS_ID, *enc.ids, EOS_ID)]
        n = (len(ids) - 1) // seq_len
        windows = torch.tensor([ids[i * seq_len: i * seq_len + seq_len + 1] for i in range(n)], dtype=torch.long)
        out[path.stem] = (windows, sum(len(s.encode()) for s in sents) / len(ids))
    if not out:
        raise SystemExit(f"no FLORES files in {CORPORA / 'flores200-sib'}")
    return out


def flores_bpb(logits_fn, windows: dict[str, tuple], batch_size: int = 16) -> dict[str, float]:
    """Bits per byte per language: summed next-token NLL (nats) / ln 2 / bytes of the predicted tokens' text."""
    import torch
    import torch.nn.functional as F

    result = {}
    with torch.no_grad():
        for lang, (w, bytes_per_token) in windows.items():
            nats = 0.0
            for i in range(0, len(w), batch_size):
                x, y = w[i: i + batch_size, :-1], w[i: i + batch_size, 1:]
                logits = logits_fn(x)
                nats += float(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                              reduction="sum"))
            result[lang] = nats / math.log(2) / (w[:, 1:].numel() * bytes_per_token)
    return result


def _mean(d: dict[str, float]) -> float:
    return sum(d.values()) / len(d)


# ----------------------------------------------------------------------------------------------- the two sides

def _link_prep(out: Path, prep: Path) -> None:
    """A fresh run directory for one side that shares the prepared data and tokenizer."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in ("data", "tokenizer"):
        (out / name).symlink_to((prep / name).resolve(), target_is_directory=True)


def _estimate_step_s(spec: SideSpec, config) -> float:
    """Seconds per optimizer step of our model (forward, backward, Muon + AdamW), from 3 timed steps on a throwaway
    copy, so its step-based checkpoints land at roughly regular times like the baseline's time-based snapshots."""
    import torch

    from vernacular.model import build_model
    from vernacular.train import OptimConfig, build_optimizers

    model = build_model(config, seed=spec.seed)
    optimizers = build_optimizers(model, OptimConfig(lr=spec.lr))
    x = torch.randint(0, config.vocab_size, (spec.batch_size, spec.seq_len + 1))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        model(x[:, :-1], labels=x[:, 1:]).loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def run_ours(spec: SideSpec) -> tuple[list[dict], dict]:
    """The product's trainer on the product's preset; returns the checkpoints' (step, elapsed, step time) points."""
    from vernacular.model import ModelConfig
    from vernacular.run import read_json
    from vernacular.train import OptimConfig, ScheduleConfig, TrainConfig, train

    out = Path(spec.out) / "run"
    _link_prep(out, Path(spec.prep))
    config = ModelConfig.load(spec.preset)
    save_every = 0  # tuning: no checkpoints, the trainer's final NTREX validation is the measure
    if spec.measure == "flores":
        save_every = max(1, round(spec.minutes * 60 / _estimate_step_s(spec, config) / spec.points))
    cfg = TrainConfig(model=spec.preset, minutes=spec.minutes, batch_size=spec.batch_size, seq_len=spec.seq_len,
                      optim=OptimConfig(name="muon", lr=spec.lr), schedule=ScheduleConfig(kind="wsd",
                                                                                          warmup=spec.warmup),
                      save_every=save_every, keep_last=10**6,
                      eval_batches=spec.eval_batches if spec.measure == "ntrex-val" else 1, seed=spec.seed)
    result = train(out, cfg)
    step_time = _cumulative_step_time(out / "metrics" / "train.jsonl")
    points = []
    for ck in sorted((out / "checkpoints").glob("step_*")):
        state = read_json(ck / "state.json")
        points.append({"step": state["step"], "elapsed_s": state["elapsed_s"], "train_s": step_time[state["step"]],
                       "tokens": state["tokens"], "checkpoint": str(ck)})
    return points, result


def _cumulative_step_time(metrics: Path) -> dict[int, float]:
    total, out = 0.0, {0: 0.0}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if "step_time_s" in r:
            total += r["step_time_s"]
            out[r["step"]] = total
    return out


def run_baseline(spec: SideSpec) -> tuple[list[dict], dict]:
    """GPT-2 + AdamW + cosine on the same batches: the loop a nanoGPT user would write, time-boxed like ours."""
    import torch
    from safetensors.torch import save_model
    from tqdm import tqdm

    from gpt2_baseline import GPT, configure_adamw, size_to_match
    from vernacular.data.loader import TokenLoader
    from vernacular.model import ModelConfig, count_parameters
    from vernacular.run import RunDir, write_json
    from vernacular.tokenizer import load as load_tokenizer
    from vernacular.train import ScheduleConfig, lr_factor

    prep = RunDir(spec.prep)
    vocab = load_tokenizer(prep.tokenizer).get_vocab_size()
    ours_cfg = ModelConfig.from_dict({**ModelConfig.load(spec.preset).to_dict(), "vocab_size": vocab})
    gcfg = size_to_match(count_parameters(ours_cfg).active, vocab, spec.seq_len, n_embd=ours_cfg.hidden_size,
                         n_head=ours_cfg.num_attention_heads)
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    model = GPT(gcfg, seed=spec.seed)
    model.train()
    opt = configure_adamw(model, spec.lr)
    schedule = ScheduleConfig(kind="cosine", warmup=spec.warmup)
    loader = TokenLoader(prep.tokens, split="train", batch_size=spec.batch_size, seq_len=spec.seq_len, seed=spec.seed)
    out = Path(spec.out)
    snaps = out / "snapshots"
    snaps.mkdir(parents=True, exist_ok=True)
    write_json(out / "gpt2_config.json", gcfg.to_dict())

    budget = spec.minutes * 60
    step, train_s, points = 0, 0.0, []
    log = open(out / "train.jsonl", "w", encoding="utf-8")
    bar = tqdm(total=int(budget), unit="s", desc="baseline", file=sys.stderr, dynamic_ncols=True)

    def snapshot(elapsed: float) -> None:
        path = snaps / f"step_{step:06d}.safetensors"
        save_model(model, str(path))
        points.append({"step": step, "elapsed_s": elapsed, "train_s": train_s,
                       "tokens": step * spec.batch_size * spec.seq_len, "checkpoint": str(path)})

    start = time.perf_counter()
    next_snap = budget / spec.points
    while (elapsed := time.perf_counter() - start) < budget:
        t0 = time.perf_counter()
        lr = spec.lr * lr_factor(schedule, step, elapsed / budget)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = loader.next_batch()
        _, loss = model(batch[:, :-1], targets=batch[:, 1:])
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        dt = time.perf_counter() - t0
        train_s += dt
        log.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr, "grad_norm": float(grad_norm),
                              "step_time_s": dt, "elapsed_s": time.perf_counter() - start}) + "\n")
        bar.set_postfix(loss=f"{loss.item():.3f}", step=step, refresh=False)
        bar.update(int(time.perf_counter() - start) - bar.n)
        if spec.measure == "flores" and time.perf_counter() - start >= next_snap:
            snapshot(time.perf_counter() - start)
            next_snap += budget / spec.points
    bar.close()
    log.close()
    if not points or points[-1]["step"] != step:
        snapshot(time.perf_counter() - start)
    result = {"step": step, "elapsed_s": time.perf_counter() - start, "gpt2_config": gcfg.to_dict()}
    if spec.measure == "ntrex-val":
        result["val_bpb_mean"] = _ntrex_val_bpb(model, spec)
    return points, result


def _ntrex_val_bpb(model, spec: SideSpec) -> float:
    """The product's validation measure (vernacular.train.evaluate_bpb on NTREX held-out), so tuning compares like
    with like: the trainer computes exactly this for ours at the end of its run."""
    import torch

    from vernacular.run import RunDir
    from vernacular.train import evaluate_bpb

    class Logits(torch.nn.Module):
        def __init__(self, gpt):
            super().__init__()
            self.gpt = gpt

        def forward(self, x):
            return type("Out", (), {"logits": self.gpt(x)[0]})()

    val = evaluate_bpb(Logits(model), RunDir(spec.prep).tokens, max_batches=spec.eval_batches,
                       batch_size=spec.batch_size, seq_len=spec.seq_len)
    return _mean(val)


# ----------------------------------------------------------------------------------------------- evaluation of a run

def evaluate_points(spec: SideSpec, points: list[dict]) -> list[dict]:
    """FLORES bpb of the untrained model (t = 0) and of every checkpoint/snapshot, after training, one thread."""
    import torch
    from safetensors.torch import load_file, load_model
    from tqdm import tqdm

    from gpt2_baseline import GPT, GPTConfig
    from vernacular.model import ModelConfig, build_model
    from vernacular.run import RunDir, read_json

    windows = flores_windows(RunDir(spec.prep).tokenizer / "tokenizer.json", spec.flores_lines, spec.seq_len)
    if spec.side == "ours":
        first = Path(points[0]["checkpoint"])
        config = ModelConfig.from_dict(read_json(first / "state.json")["model_config"])

        def load(point):
            model = build_model(config, seed=spec.seed)
            if point is not None:
                model.load_state_dict(load_file(Path(point["checkpoint"]) / "model.safetensors"))
            return model.eval(), (lambda x: model(x).logits)
    else:
        gcfg = GPTConfig(**read_json(Path(spec.out) / "gpt2_config.json"))

        def load(point):
            model = GPT(gcfg, seed=spec.seed)
            if point is not None:
                load_model(model, point["checkpoint"])
            return model.eval(), (lambda x: model(x)[0])

    evaluated = []
    for point in tqdm([None, *points], desc=f"{spec.side}: FLORES bpb", file=sys.stderr, dynamic_ncols=True):
        _, logits_fn = load(point)
        per_lang = flores_bpb(logits_fn, windows)
        base = point or {"step": 0, "elapsed_s": 0.0, "train_s": 0.0, "tokens": 0, "checkpoint": None}
        evaluated.append({**base, "bpb": _mean(per_lang), "bpb_per_language": per_lang})
    return evaluated


def worker(spec_path: Path) -> int:
    """One side, in its own process: train, then measure; writes OUT/result.json."""
    import shutil

    import torch

    from vernacular.run import write_json

    spec = SideSpec(**json.loads(Path(spec_path).read_text(encoding="utf-8")))
    torch.set_num_threads(spec.threads)
    points, result = run_ours(spec) if spec.side == "ours" else run_baseline(spec)
    record = {"spec": asdict(spec), "result": result, "points": points}
    if spec.measure == "flores":
        record["points"] = evaluate_points(spec, points)
        for point in points:  # the figures are in result.json; checkpoints of a benchmark are not worth the disk
            path = Path(point["checkpoint"])
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    write_json(Path(spec.out) / "result.json", record)
    return 0


def run_sides(specs: list[SideSpec], sequential: bool) -> list[dict]:
    """Launch each side as a subprocess (concurrently unless `sequential`), wait, return their result.json."""
    from tqdm import tqdm

    def launch(spec: SideSpec) -> subprocess.Popen:
        out = Path(spec.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.json").write_text(json.dumps(asdict(spec), indent=2), encoding="utf-8")
        env = dict(os.environ, OMP_NUM_THREADS=str(spec.threads), MKL_NUM_THREADS=str(spec.threads),
                   PYTHONHASHSEED=str(spec.seed))
        log = open(out / "worker.log", "w", encoding="utf-8")
        print(f"  {spec.side}: lr {spec.lr:g}, {spec.threads} thread(s), {spec.minutes:g} min -> {out}/worker.log",
              flush=True)
        return subprocess.Popen([sys.executable, __file__, "--worker", str(out / "spec.json")], stdout=log,
                                stderr=subprocess.STDOUT)

    def wait(procs: list[tuple[SideSpec, subprocess.Popen]]) -> None:
        minutes = max(s.minutes for s, _ in procs)
        with tqdm(total=int(minutes * 60), unit="s", desc=" + ".join(s.side for s, _ in procs), file=sys.stderr,
                  dynamic_ncols=True) as bar:
            start = time.perf_counter()
            while any(p.poll() is None for _, p in procs):
                time.sleep(1.0)
                bar.update(min(int(time.perf_counter() - start), bar.total) - bar.n)
        for spec, p in procs:
            if p.returncode != 0:
                tail = (Path(spec.out) / "worker.log").read_text(encoding="utf-8", errors="replace")[-3000:]
                raise SystemExit(f"{spec.side} worker failed (exit {p.returncode}); end of its log:\n{tail}")

    if sequential:
        for spec in specs:
            wait([(spec, launch(spec))])
    else:
        wait([(spec, launch(spec)) for spec in specs])
    return [json.loads((Path(s.out) / "result.json").read_text(encoding="utf-8")) for s in specs]


# ----------------------------------------------------------------------------------------------- the comparison

def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """First time a (time, bpb) curve reaches `target`, linearly interpolated between the points around it."""
    for (t0, b0), (t1, b1) in zip(curve, curve[1:]):
        if b1 <= target:
            if b0 <= target:
                return t0
            return t0 + (t1 - t0) * (b0 - target) / (b0 - b1)
    return None


def summarize(ours: dict, base: dict) -> dict:
    o, b = ours["points"], base["points"]
    final_o, final_b = o[-1]["bpb"], b[-1]["bpb"]
    reach = time_to_reach([(p["train_s"], p["bpb"]) for p in o], final_b)
    base_time = b[-1]["train_s"]
    rel = (final_b - final_o) / final_b
    return {
        "ours_final_bpb": final_o, "baseline_final_bpb": final_b, "relative_bpb_reduction": rel,
        "ours_train_s": o[-1]["train_s"], "baseline_train_s": base_time,
        "ours_steps": o[-1]["step"], "baseline_steps": b[-1]["step"],
        "ours_tokens": o[-1]["tokens"], "baseline_tokens": b[-1]["tokens"],
        "ours_time_to_baseline_final_s": reach,
        "time_ratio": reach / base_time if reach is not None else None,
        "goal_met": rel >= 0.15 or (reach is not None and reach / base_time <= 0.5),
    }


def plot(ours: dict, base: dict, summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rec, label, color in ((ours, "ours: MoE+MLA+MTP, Muon, WSD", "tab:red"),
                              (base, "dense GPT-2, AdamW, cosine", "tab:blue")):
        pts = rec["points"]
        ax.plot([p["train_s"] for p in pts], [p["bpb"] for p in pts], "o-", color=color, label=label, ms=4)
    ax.axhline(summary["baseline_final_bpb"], color="tab:blue", ls=":", lw=1)
    if summary["ours_time_to_baseline_final_s"] is not None:
        ax.axvline(summary["ours_time_to_baseline_final_s"], color="tab:red", ls=":", lw=1)
    first = max(ours["points"][1]["bpb"], base["points"][1]["bpb"])  # the untrained point would flatten the plot
    ax.set_ylim(min(summary["ours_final_bpb"], summary["baseline_final_bpb"]) * 0.97, first * 1.05)
    ax.set_xlabel("training time (s, summed optimizer steps)")
    ax.set_ylabel("FLORES-200 bits per byte (mean of 30 languages)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _title(saved: dict) -> str:
    lines = saved.get("flores_lines", saved["ours"]["spec"]["flores_lines"])
    return (f"CPU speedrun: {saved['minutes']:g} min per side, {saved['mode']}, {saved['threads']} threads in all\n"
            f"trained on NTREX-128, measured on FLORES-200 ({lines} sentences x 30 languages)")


def _specs(args, prep: Path, out: Path, lr_ours: float, lr_base: float, minutes: float,
           measure: str) -> list[SideSpec]:
    threads = args.threads if args.sequential else max(1, args.threads // 2)
    common = dict(prep=str(prep), minutes=minutes, threads=threads, batch_size=args.batch_size, seq_len=args.seq_len,
                  warmup=args.warmup, points=args.points, seed=args.seed, preset=args.preset,
                  flores_lines=args.flores_lines, measure=measure, eval_batches=args.eval_batches)
    return [SideSpec(side="ours", out=str(out / "ours"), lr=lr_ours, **common),
            SideSpec(side="baseline", out=str(out / "baseline"), lr=lr_base, **common)]


def tune(args, prep: Path) -> int:
    """The same LR sweep effort for both sides, short budget, NTREX held-out bpb (FLORES is never looked at)."""
    from vernacular.run import write_json

    lrs_o = [float(x) for x in args.tune_lrs_ours.split(",")]
    lrs_b = [float(x) for x in args.tune_lrs_base.split(",")]
    if len(lrs_o) != len(lrs_b):
        raise SystemExit("--tune-lrs-ours and --tune-lrs-base need the same number of values (run in pairs)")
    # a sweep extended later (e.g. one more LR past the edge of the grid) adds to the earlier rows of the same setup
    setup = {"minutes": args.tune_minutes, "threads": args.threads, "sequential": args.sequential,
             "batch_size": args.batch_size, "seq_len": args.seq_len, "warmup": args.warmup, "preset": args.preset,
             "eval_batches": args.eval_batches, "seed": args.seed}
    tune_file = RESULTS / "speedrun_cpu_tune.json"
    rows = []
    if tune_file.exists():
        previous = json.loads(tune_file.read_text(encoding="utf-8"))
        if previous.get("setup") == setup:
            rows = [r for r in previous["rows"]
                    if not any(r["lr"] == lr for lr in (lrs_o if r["side"] == "ours" else lrs_b))]
    commands = ([] if not rows else previous.get("commands", [])) + [" ".join(sys.argv)]
    for i, (lo, lb) in enumerate(zip(lrs_o, lrs_b)):
        print(f"tuning pair {i + 1}/{len(lrs_o)}", flush=True)
        specs = _specs(args, prep, Path(args.work_dir) / f"tune_{i}", lo, lb, args.tune_minutes, "ntrex-val")
        o, b = run_sides(specs, args.sequential)
        rows.append({"side": "ours", "lr": lo, "ntrex_val_bpb": o["result"]["val_bpb_mean"],
                     "steps": o["result"]["step"]})
        rows.append({"side": "baseline", "lr": lb, "ntrex_val_bpb": b["result"]["val_bpb_mean"],
                     "steps": b["result"]["step"]})
    best = {side: min((r for r in rows if r["side"] == side), key=lambda r: r["ntrex_val_bpb"])["lr"]
            for side in ("ours", "baseline")}
    rows.sort(key=lambda r: (r["side"] != "ours", r["lr"]))
    print(f"\n{'side':9} {'lr':>8} {'steps':>6} {'NTREX val bpb':>14}")
    for r in rows:
        print(f"{r['side']:9} {r['lr']:8.2g} {r['steps']:6d} {r['ntrex_val_bpb']:14.4f}")
    print(f"best: ours lr {best['ours']:g}, baseline lr {best['baseline']:g}")
    write_json(tune_file, {"commands": commands, "setup": setup, "rows": rows, "best": best})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per side (default 10)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all (concurrent: split between sides)")
    p.add_argument("--sequential", action="store_true", help="one side after the other, each with all threads")
    p.add_argument("--work-dir", default="runs/bench_speedrun_cpu", help="prepared data, runs, logs")
    p.add_argument("--preset", default="tiny", help="our model preset (default tiny)")
    p.add_argument("--lr-ours", type=float, default=None, help="default: the tuned value, else 3e-3")
    p.add_argument("--lr-base", type=float, default=None, help="default: the tuned value, else 1e-3")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--warmup", type=int, default=5, help="linear warmup steps, both sides")
    p.add_argument("--points", type=int, default=8, help="evaluation points along each run")
    p.add_argument("--flores-lines", type=int, default=50, help="FLORES sentences per language to evaluate on")
    p.add_argument("--eval-batches", type=int, default=1, help="tuning: NTREX held-out batches per language")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tune", action="store_true", help="run the LR sweep instead (NTREX held-out only)")
    p.add_argument("--tune-minutes", type=float, default=2.5)
    p.add_argument("--tune-lrs-ours", default="3e-3,6e-3,1.2e-2")
    p.add_argument("--tune-lrs-base", default="1.5e-3,3e-3,6e-3")
    p.add_argument("--replot", action="store_true", help="redraw the PNG from results/speedrun_cpu.json and stop")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker)
    if args.replot:
        saved = json.loads((RESULTS / "speedrun_cpu.json").read_text(encoding="utf-8"))
        plot(saved["ours"], saved["baseline"], saved["summary"], RESULTS / "speedrun_cpu.png", _title(saved))
        return 0
    if args.minutes <= 0 or args.threads <= 0 or args.points < 2:
        raise SystemExit("--minutes and --threads must be positive and --points at least 2")

    work = Path(args.work_dir).resolve()
    prep = prepare(work / "prep", args.vocab_size, args.seed)
    if args.tune:
        return tune(args, prep)

    tuned = {}
    tune_file = RESULTS / "speedrun_cpu_tune.json"
    if tune_file.exists():
        tuned = json.loads(tune_file.read_text(encoding="utf-8"))["best"]
    lr_ours = args.lr_ours or tuned.get("ours", 3e-3)
    lr_base = args.lr_base or tuned.get("baseline", 1e-3)
    mode = "sequential" if args.sequential else "concurrent"
    print(f"speedrun: {args.minutes:g} min per side, {mode}, {args.threads} thread(s) in all", flush=True)
    ours, base = run_sides(_specs(args, prep, work / "run", lr_ours, lr_base, args.minutes, "flores"),
                           args.sequential)
    summary = summarize(ours, base)
    from vernacular.run import write_json

    saved = {"command": "python benchmarks/speedrun_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
             "mode": mode, "threads": args.threads, "minutes": args.minutes, "flores_lines": args.flores_lines,
             "lr": {"ours": lr_ours, "baseline": lr_base}, "summary": summary, "ours": ours, "baseline": base}
    write_json(RESULTS / "speedrun_cpu.json", saved)
    plot(ours, base, summary, RESULTS / "speedrun_cpu.png", _title(saved))
    s = summary
    print(f"\n{'':10} {'final bpb':>10} {'steps':>7} {'tokens':>11} {'train s':>8}")
    print(f"{'ours':10} {s['ours_final_bpb']:10.4f} {s['ours_steps']:7d} {s['ours_tokens']:11,d} "
          f"{s['ours_train_s']:8.0f}")
    print(f"{'baseline':10} {s['baseline_final_bpb']:10.4f} {s['baseline_steps']:7d} {s['baseline_tokens']:11,d} "
          f"{s['baseline_train_s']:8.0f}")
    print(f"bpb: ours / baseline = {s['ours_final_bpb'] / s['baseline_final_bpb']:.3f} "
          f"({100 * s['relative_bpb_reduction']:+.1f}% lower; goal >= 15%)")
    if s["time_ratio"] is None:
        print("ours never reached the baseline's final bpb within its budget")
    else:
        print(f"ours reached the baseline's final bpb in {s['ours_time_to_baseline_final_s']:.0f} s = "
              f"{s['time_ratio']:.2f}x the baseline's time (goal <= 0.5x)")
    print(f"goal {'MET' if s['goal_met'] else 'NOT met'}; curves: {RESULTS / 'speedrun_cpu.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
