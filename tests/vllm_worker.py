"""Runs inside the vLLM virtual environment (`.venv-vllm`, made by `.ci/run`), started by tests/test_vllm.py.

    .venv-vllm/bin/python tests/vllm_worker.py SPEC.json OUT.json

SPEC: {"jobs": [{"model": HF export folder, "prompts": [[token ids], ...], "new_tokens": int, "mla": bool}, ...]}.
Writes OUT: {"results": [[{"tokens": [...], "prompt_logprobs": [None, float, ...]}, ...], ...]}, one list per job.
Greedy decoding with vLLM's offline `LLM`, fp32, with the two CPU workarounds of docs/interop.md: `VLLM_MLA_DISABLE=1`
when the model's MLA head size is not one vLLM's CPU MLA kernel takes (`mla: false`), and the PyTorch path of the
rotary embedding (`custom_ops: ["-rotary_embedding"]`: vLLM's CPU custom op computes wrong values for DeepSeek's 3-D
query). The jobs share one process so vLLM is imported once. Imports only vLLM and the standard library: the
vernacular package is not installed in this environment.
"""

from __future__ import annotations

import gc
import json
import os
import sys


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process: faster start
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    results = []
    for job in spec["jobs"]:
        if job["mla"]:
            os.environ.pop("VLLM_MLA_DISABLE", None)
        else:
            os.environ["VLLM_MLA_DISABLE"] = "1"
        llm = LLM(model=job["model"], dtype="float32", max_model_len=256, max_num_seqs=4, seed=0, enforce_eager=True,
                  compilation_config={"custom_ops": ["-rotary_embedding"]})
        params = SamplingParams(temperature=0.0, max_tokens=job["new_tokens"], ignore_eos=True, prompt_logprobs=0)
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in job["prompts"]]
        outputs = []
        for ids, r in zip(job["prompts"], llm.generate(prompts, params, use_tqdm=False)):
            prompt_lps = [None if d is None else d[tok].logprob for tok, d in zip(ids, r.prompt_logprobs)]
            outputs.append({"tokens": list(r.outputs[0].token_ids), "prompt_logprobs": prompt_lps})
        results.append(outputs)
        del llm
        gc.collect()
    with open(out_path, "w") as f:
        json.dump({"results": results}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
