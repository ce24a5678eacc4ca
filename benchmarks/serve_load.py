"""Serving under load: 1, 4, 16, 64 concurrent streaming chat clients against one `vernacular serve` process.

    python benchmarks/serve_load.py --threads 1                 # a random-init ~10 M-param run, all levels
    python benchmarks/serve_load.py --levels 1,16 --rounds 1     # quick look
    python benchmarks/serve_load.py --run-dir runs/demo          # a real run directory (its latest checkpoint)
    python benchmarks/serve_load.py --soak 300 --threads 1      # soak: 64 streaming clients for 5 minutes

Soak mode (`--soak SECONDS`, issue 14): `--soak-clients` (64) streaming chat clients send requests back to back for
the given time; a quarter of the requests (`--disconnect-rate`) hang up after a random number of chunks, as a
browser tab that is closed would. Reported: errors among the requests that were not abandoned (must be 0), latency of
completed requests (p50/p99), the server's resident memory (VmRSS) after warm-up and at the end (must not grow beyond
noise), and whether every abandoned request left the engine (`/health` shows 0 running and 0 waiting afterwards).

The baseline is one stream: continuous batching should make 16 concurrent streams produce >= 4x the aggregate
tokens/s of one, because a decode step over 16 rows costs little more than over one (the weights are read once, the
MLA latent cache is small). The server is a real `vernacular serve` subprocess on 127.0.0.1; the clients are httpx
AsyncClients speaking SSE, like any OpenAI client would. Per level, each of N clients sends `--rounds` requests one
after the other (a bounded count), under a wall-clock limit per level.

Figures per level: aggregate completion tokens/s (usage.completion_tokens summed over the level's wall time),
time to first token (request sent -> first content chunk) and inter-token latency (gap between content chunks; the
server sends one chunk per decode step unless the UTF-8 / stop-string hold-back merges two) at p50 and p99, and
errors (HTTP status other than 200, a stream without [DONE], a missing usage chunk, a timeout): must be 0. CPU use of
the server process and of the client process (this one) per level shows where the machine's cores went; on a shared
machine the server gets a share of the cores set by everyone else's load, so tokens per server CPU second is the
figure that load does not move.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NTREX = REPO.parent / "shared" / "corpora" / "ntrex128"  # training split of the shared corpora, never FLORES


@dataclass
class RequestResult:
    ok: bool
    error: str = ""
    tokens: int = 0
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)


@dataclass
class LevelResult:
    clients: int
    requests: int
    wall_s: float
    tokens: int
    ttft: list[float]
    gaps: list[float]
    errors: list[str]
    server_cpu_s: float = float("nan")  # user + system CPU seconds of the server process during the level
    client_cpu_s: float = float("nan")  # the same for this (client) process

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tok_per_cpu_s(self) -> float:
        """Tokens per CPU second of the server: its efficiency, whatever share of a busy machine it got."""
        return self.tokens / self.server_cpu_s if self.server_cpu_s > 0 else float("nan")


# ---------------------------------------------------------------- the run directory to serve
def prepare_run(root: Path, preset: str, vocab_size: int, seed: int) -> Path:
    """A run directory with a tokenizer trained on NTREX (all languages) and a random-init `preset` checkpoint,
    written by the tokenizer stage's and the trainer's own writers, so `vernacular serve` loads it like a real run."""
    import torch

    from vernacular.model import ModelConfig, build_model
    from vernacular.run import RunDir
    from vernacular.tokenizer.corpus import Corpus, read_folder
    from vernacular.tokenizer.train import TokenizerConfig, save_tokenizer, train_tokenizer
    from vernacular.train.checkpoint import save_checkpoint

    run = RunDir(root).create()
    cfg = TokenizerConfig(vocab_size=vocab_size, method="plain", seed=seed)
    tok, _ = train_tokenizer(Corpus(train=read_folder(NTREX)), cfg, progress=False)
    save_tokenizer(tok, run.tokenizer, cfg)
    model = build_model(ModelConfig.load(preset, vocab_size=tok.get_vocab_size()), seed=seed)
    state = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    save_checkpoint(run.checkpoints, 1, state, {}, {"model_config": model.config.to_dict()})
    n_params = sum(p.numel() for p in model.parameters())
    print(f"prepared {root}: preset {preset!r}, {n_params / 1e6:.1f} M parameters, vocab {tok.get_vocab_size()}",
          flush=True)  # fmt: skip
    return root


# ---------------------------------------------------------------- the server process
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, port: int, max_batch: int, threads: int | None, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vernacular", "serve", "--run-dir", str(run_dir), "--host", "127.0.0.1",
           "--port", str(port), "--max-batch", str(max_batch), "--model-name", "bench", "--log-level", "warning"]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k != "VERNACULAR_API_KEY"}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


async def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300,
                       name: str = "vernacular serve") -> None:  # fmt: skip
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if (await client.get(url + "/health", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} did not become healthy within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


# ---------------------------------------------------------------- the clients
async def one_request(client, url: str, prompt: str, max_tokens: int, seed: int,
                      temperature: float = 0.8) -> RequestResult:  # fmt: skip
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": max_tokens, "temperature": temperature,
            "seed": seed, "ignore_eos": True}  # fmt: skip
    t0 = time.perf_counter()
    last = None
    res = RequestResult(ok=False)
    done = False
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            return RequestResult(ok=False, error=f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                res.tokens = chunk["usage"]["completion_tokens"]
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                now = time.perf_counter()
                if last is None:
                    res.ttft = now - t0
                else:
                    res.gaps.append(now - last)
                last = now
    if not done:
        res.error = "stream ended without [DONE]"
    elif res.tokens != max_tokens:
        res.error = f"usage says {res.tokens} completion tokens, asked for {max_tokens} (ignore_eos)"
    else:
        res.ok = True
    return res


async def run_level(url: str, clients: int, rounds: int, max_tokens: int, prompts: list[str], limit_s: float,
                    seed: int, temperature: float = 0.8) -> LevelResult:  # fmt: skip
    import httpx

    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async def worker(c: int, client) -> None:
        for r in range(rounds):
            i = c * rounds + r
            try:
                results.append(await one_request(client, url, prompts[i % len(prompts)], max_tokens, seed + i,
                                                 temperature))  # fmt: skip
            except Exception as e:  # counted, not hidden: every error shows in the table
                results.append(RequestResult(ok=False, error=f"{type(e).__name__}: {e}"))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(limit_s)) as client:
        tasks = [asyncio.create_task(worker(c, client)) for c in range(clients)]
        _, pending = await asyncio.wait(tasks, timeout=limit_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - t0
    errors = [r.error for r in results if not r.ok]
    missing = clients * rounds - len(results)
    errors += [f"not finished within {limit_s:.0f} s"] * missing
    return LevelResult(clients=clients, requests=clients * rounds, wall_s=wall,
                       tokens=sum(r.tokens for r in results if r.ok),
                       ttft=[r.ttft for r in results if r.ok and r.ttft is not None],
                       gaps=[g for r in results if r.ok for g in r.gaps], errors=errors)  # fmt: skip


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(args, url: str, server_pid: int) -> dict:
    """`args.soak_clients` streaming clients for `args.soak` seconds with random disconnects; see the docstring."""
    import random

    import httpx

    langs = sorted(p.stem for p in NTREX.glob("*.txt"))
    prompts = [(NTREX / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[i] for i in range(4) for lang in langs]
    await run_level(url, 2, 1, 8, prompts, args.level_timeout, args.seed)  # warm-up
    rss = [rss_mib(server_pid)]
    rng = random.Random(args.seed)
    stats = {"completed": 0, "abandoned": 0, "errors": [], "latency": [], "ttft": []}
    end = time.monotonic() + args.soak
    limits = httpx.Limits(max_connections=args.soak_clients + 4, max_keepalive_connections=args.soak_clients + 4)

    async def one(client, i: int) -> None:
        body = {"model": "bench", "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                "stream": True, "max_tokens": rng.randint(8, args.max_tokens), "temperature": 0.8, "seed": i}  # fmt: skip
        hang_up_after = rng.randint(1, 12) if rng.random() < args.disconnect_rate else None
        t0, chunks, done, first = time.perf_counter(), 0, False, None
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                stats["errors"].append(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    stats["errors"].append(f"error event: {chunk['error']}")
                    return
                chunks += 1
                first = first or time.perf_counter()
                if hang_up_after is not None and chunks >= hang_up_after:
                    stats["abandoned"] += 1
                    return  # leaving the `async with` closes the connection mid-stream
        if not done:
            stats["errors"].append("stream ended without [DONE]")
            return
        stats["completed"] += 1
        stats["latency"].append(time.perf_counter() - t0)
        stats["ttft"].append((first or time.perf_counter()) - t0)

    async def worker(c: int, client) -> None:
        i = c
        while time.monotonic() < end:
            try:
                await one(client, i)
            except Exception as e:  # counted, not hidden
                stats["errors"].append(f"{type(e).__name__}: {e}")
            i += args.soak_clients

    async def sample_rss() -> None:
        while time.monotonic() < end:
            await asyncio.sleep(5)
            rss.append(rss_mib(server_pid))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(args.level_timeout)) as client:
        await asyncio.gather(sample_rss(), *[worker(c, client) for c in range(args.soak_clients)])
        wall = time.perf_counter() - t0
        health = {}
        for _ in range(100):  # abandoned requests must all have left the engine
            health = (await client.get(url + "/health")).json()
            if health.get("running") == 0 and health.get("waiting") == 0:
                break
            await asyncio.sleep(0.1)
    rss.append(rss_mib(server_pid))
    return {**stats, "wall_s": wall, "rss_start": rss[0], "rss_end": rss[-1], "rss_max": max(rss), "health": health}


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # fields from 3 (state) on


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default) and of its live child processes (a server that
    runs its engine in a child, as vLLM does): where the 2 cores went, server vs clients."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        parents = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    parents.setdefault(int(_stat(int(d.name))[1]), []).append(int(d.name))  # ppid (field 4)
                except (OSError, IndexError, ValueError):
                    pass  # a process that ended meanwhile
        total, todo = 0.0, [pid]
        while todo:
            p = todo.pop()
            try:
                fields = _stat(p)
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (14, 15)
            except (OSError, IndexError, ValueError):
                if p == pid:
                    raise
            todo += parents.get(p, [])
        return total
    except (OSError, IndexError, ValueError):
        return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def table(levels: list[LevelResult]) -> str:
    base = levels[0].tok_s if levels and levels[0].tok_s > 0 else float("nan")
    base_cpu = levels[0].tok_per_cpu_s if levels else float("nan")
    head = ("| streams | requests | tokens | wall s | aggregate tok/s | vs 1 stream | TTFT p50 ms | TTFT p99 ms "
            "| ITL p50 ms | ITL p99 ms | server CPU % | client CPU % | tok per server CPU s | vs 1 stream | errors |\n"
            + "|---:" * 15 + "|")
    rows = [f"| {r.clients} | {r.requests} | {r.tokens} | {r.wall_s:.1f} | {r.tok_s:.1f} | {r.tok_s / base:.2f}x "
            f"| {pct(r.ttft, 50) * 1e3:.0f} | {pct(r.ttft, 99) * 1e3:.0f} | {pct(r.gaps, 50) * 1e3:.1f} "
            f"| {pct(r.gaps, 99) * 1e3:.1f} | {100 * r.server_cpu_s / r.wall_s:.0f} "
            f"| {100 * r.client_cpu_s / r.wall_s:.0f} | {r.tok_per_cpu_s:.0f} | {r.tok_per_cpu_s / base_cpu:.2f}x "
            f"| {len(r.errors)} |" for r in levels]  # fmt: skip
    return "\n".join([head, *rows])


async def bench(args, url: str, server_pid: int) -> list[LevelResult]:
    langs = sorted(p.stem for p in NTREX.glob("*.txt"))
    prompts = [(NTREX / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[i] for i in range(4) for lang in langs]
    # warm-up: first-call costs (allocator, kernels) do not belong to the 1-stream baseline
    temperature = getattr(args, "temperature", 0.8)
    await run_level(url, 2, 1, 8, prompts, args.level_timeout, args.seed, temperature)
    out = []
    for n in args.levels:
        rounds = max(args.rounds, -(-args.min_requests // n))
        server0, client0 = cpu_seconds(server_pid), cpu_seconds()
        r = await run_level(url, n, rounds, args.max_tokens, prompts, args.level_timeout, args.seed, temperature)
        r.server_cpu_s, r.client_cpu_s = cpu_seconds(server_pid) - server0, cpu_seconds() - client0
        print(f"{n:>3} streams: {r.tok_s:8.1f} tok/s aggregate, TTFT p50 {pct(r.ttft, 50) * 1e3:6.0f} ms, "
              f"ITL p50 {pct(r.gaps, 50) * 1e3:6.1f} ms, errors {len(r.errors)}", flush=True)  # fmt: skip
        for e in sorted(set(r.errors))[:5]:
            print(f"     error: {e}", flush=True)
        out.append(r)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, help="serve this run directory (default: prepare a random-init one)")
    p.add_argument("--preset", default="tiny", help="model preset for the prepared run (default: tiny, ~10 M)")
    p.add_argument("--vocab-size", type=int, default=8192, help="tokenizer vocabulary of the prepared run")
    p.add_argument("--levels", default="1,4,16,64", help="concurrent streams per level, comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="requests each client sends, one after the other")
    p.add_argument("--min-requests", type=int, default=8,
                   help="at least this many requests per level (low levels send more rounds, for a steadier figure)")
    p.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request (ignore_eos)")
    p.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch (cache slots)")
    p.add_argument("--threads", type=int, default=None, help="the server's torch threads")
    p.add_argument("--level-timeout", type=float, default=600, help="wall-clock limit per level, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                   help="soak test instead of the levels: streaming clients with random disconnects for this long")
    p.add_argument("--soak-clients", type=int, default=64, help="concurrent streaming clients of the soak test")
    p.add_argument("--disconnect-rate", type=float, default=0.25, help="share of soak requests abandoned mid-stream")
    args = p.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    if not args.levels or min(args.levels) < 1 or args.rounds < 1 or args.max_tokens < 1:
        p.error("levels, rounds and max tokens must be positive")

    with tempfile.TemporaryDirectory(prefix="vernacular-serve-load-") as tmp:
        run_dir = args.run_dir or prepare_run(Path(tmp) / "run", args.preset, args.vocab_size, args.seed)
        port, log = free_port(), Path(tmp) / "server.log"
        proc = start_server(run_dir, port, args.max_batch, args.threads, log)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(wait_healthy(url, proc, log))
            if args.soak:
                r = asyncio.run(soak(args, url, proc.pid))
            else:
                levels = asyncio.run(bench(args, url, proc.pid))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.soak:
            print(f"\nsoak: {args.soak_clients} streaming clients, {r['wall_s']:.0f} s, "
                  f"{r['completed']} requests completed, {r['abandoned']} abandoned mid-stream by their client")
            print(f"latency of completed requests: p50 {pct(r['latency'], 50):.2f} s, p99 {pct(r['latency'], 99):.2f} s;"
                  f" TTFT p50 {pct(r['ttft'], 50) * 1e3:.0f} ms, p99 {pct(r['ttft'], 99) * 1e3:.0f} ms")
            print(f"server RSS: {r['rss_start']:.0f} MiB after warm-up, {r['rss_end']:.0f} MiB at the end "
                  f"(max {r['rss_max']:.0f} MiB, growth {r['rss_end'] - r['rss_start']:+.0f} MiB)")
            print(f"after the soak: /health running={r['health'].get('running')} waiting={r['health'].get('waiting')} "
                  f"status={r['health'].get('status')}")
            for e in sorted(set(r["errors"]))[:5]:
                print(f"     error: {e}")
            leaked = r["health"].get("running") != 0 or r["health"].get("waiting") != 0
            print(f"errors: {len(r['errors'])} (must be 0)")
            return 1 if r["errors"] or leaked else 0
        print()
        print(table(levels))
        by_n = {r.clients: r for r in levels}
        if 1 in by_n and 16 in by_n and by_n[1].tok_s > 0:
            ratio = by_n[16].tok_s / by_n[1].tok_s
            verdict = "met" if ratio >= 4 else "NOT met"
            print(f"\naggregate tok/s at 16 streams / 1 stream: {ratio:.2f}x (goal >= 4x: {verdict})")
            cpu_ratio = by_n[16].tok_per_cpu_s / by_n[1].tok_per_cpu_s
            print(f"tokens per server CPU second at 16 streams / 1 stream: {cpu_ratio:.2f}x")
        errors = sum(len(r.errors) for r in levels)
        print(f"errors: {errors} (must be 0)")
        return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
