"""`VernacularLM`: an lm-evaluation-harness model class backed by a Vernacular checkpoint, in-process.

Registered in lm-eval's model registry as ``vernacular`` when this module is imported, so both of these work:

    import vernacular.eval.lm, lm_eval
    lm_eval.simple_evaluate(model="vernacular", model_args={"run_dir": "runs/speedrun"}, tasks=[...])
    lm_eval.simple_evaluate(model=VernacularLM(run_dir="runs/speedrun"), tasks=[...])

It derives from lm-eval's ``TemplateLM``, the base of its ``hf`` model, so context/continuation splitting, empty-context
handling (the BOS token as prefix) and rolling windows (``lm_eval.utils.get_rolling_token_windows``) are lm-eval's own
code and our numbers line up with ``hf`` on the exported model (tests/test_eval.py checks both to 1e-4).

- ``loglikelihood`` / ``loglikelihood_rolling``: batched forwards of our ``Transformer``, logits only at the scored
  positions, log-softmax in fp32; the choices of one question run their shared context once (latent KV cache copied
  per choice). Returns natural-log likelihoods, as lm-eval expects.
- ``generate_until``: greedy decoding through the serving ``Engine`` (continuous batching over the latent KV cache).
"""

from __future__ import annotations

import logging
import threading
import lm_eval.models  # noqa: F401  (lm-eval registers its own models only while its registry is empty: do it first)
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

eval_logger = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_model("vernacular")
class VernacularLM(TemplateLM):
    """lm-eval model over a Vernacular run directory or checkpoint folder.

    model_args: ``run_dir`` (latest checkpoint of a run) and/or ``checkpoint`` (a folder, step name or step number),
    ``batch_size`` (sequences per forward, default 32), ``max_length`` (tokens per window, default the model's
    ``max_position_embeddings``), ``device`` ("cpu", "cuda", ...), ``dtype`` ("float32" | "bfloat16" | "float16").
    Raises ``vernacular.train.checkpoint.CheckpointError`` when the checkpoint or tokenizer cannot be found or read.
    """

    def __init__(self, run_dir: str | None = None, checkpoint: str | None = None, batch_size: int | str = 32,
                 max_length: int | None = None, device: str = "cpu", dtype: str = "float32", **kwargs):  # fmt: skip
        super().__init__()
        from vernacular.serve.loading import find_tokenizer_dir, load_model_for_serving, resolve_checkpoint
        from vernacular.serve.text import ServingTokenizer

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI passes device="cuda" unless told otherwise; on a CPU-only machine that means the CPU
            eval_logger.warning("CUDA is not available; evaluating on the CPU")
            device = "cpu"
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        folder = resolve_checkpoint(run_dir, checkpoint)
        self.model, self.checkpoint = load_model_for_serving(folder, dtype=_DTYPES[dtype], device=device)
        self.tokenizer = ServingTokenizer(find_tokenizer_dir(self.checkpoint, run_dir))
        if self.tokenizer.bos_id is None or self.tokenizer.eos_id is None:
            raise ValueError(f"the tokenizer in {self.tokenizer.folder} defines no BOS or EOS token")
        self._device = torch.device(device)
        # lm-eval passes batch_size="auto" from its CLI default; we use a fixed size (CPU memory is not probed)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 32
        limit = self.model.config.max_position_embeddings
        self.max_length = min(int(max_length), limit) if max_length else limit
        self._engine = None
        self._engine_lock = threading.Lock()

    # ------------------------------------------------------------------ tokens
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """Documents are framed with BOS in training, so BOS conditions an empty context (as `hf` does)."""
        return self.tokenizer.bos_id

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def get_model_info(self) -> dict:
        return {"model_checkpoint": str(self.checkpoint), "model_num_parameters": sum(
            p.numel() for p in self.model.parameters())}  # fmt: skip

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def _score(self, windows: list[tuple[list[int], list[int]]], desc: str, disable_tqdm: bool,
               cache_keys: list | None = None) -> list[tuple[float, bool]]:  # fmt: skip
        """(context ids, continuation ids) -> (sum of continuation log-probs in nats, continuation is greedy).

        Sequences longer than `max_length` + 1 keep their last tokens (lm-eval's left truncation). Requests that share
        their context (the choices of a multiple-choice question) run the context once: it is prefilled into the
        latent KV cache, copied to one slot per choice, and only the continuations are run after it
        (`_forward_shared`). The others run as plain right-padded forwards, longest first."""
        items = []
        for ctx, cont in windows:
            if not cont or len(cont) > self.max_length:
                raise ValueError(f"continuation of {len(cont)} tokens: must be 1..{self.max_length} (max_length)")
            whole = (list(ctx) + list(cont))[-(self.max_length + 1) :]
            ctx = tuple(whole[: len(whole) - len(cont)])
            if not ctx:
                raise ValueError("lm-eval sent an empty context (it conditions empty contexts on the prefix token)")
            items.append((ctx, list(cont)))
        by_context: dict[tuple, list[int]] = {}
        for i, (ctx, _) in enumerate(items):
            by_context.setdefault(ctx, []).append(i)
        single, shared = [], []
        for ctx, members in by_context.items():
            if len(members) == 1:
                single += members
            else:
                shared += [members[s : s + self.batch_size] for s in range(0, len(members), self.batch_size)]
        single.sort(key=lambda i: -len(items[i][0]) - len(items[i][1]))
        shared.sort(key=lambda m: -len(items[m[0]][0]))
        out: list[tuple[float, bool] | None] = [None] * len(items)
        bar = tqdm(total=len(items), desc=desc, disable=disable_tqdm)

        def finish(idx: list[int], logits: list[torch.Tensor]) -> None:
            for i, rows in zip(idx, logits):
                logp = F.log_softmax(rows.float(), dim=-1)
                target = torch.tensor(items[i][1], device=logp.device)
                ll = float(logp.gather(1, target[:, None]).sum())
                greedy = bool((logp.argmax(-1) == target).all())
                out[i] = (ll, greedy)
                if cache_keys is not None and cache_keys[i] is not None:
                    self.cache_hook.add_partial("loglikelihood", cache_keys[i], (ll, greedy))
            bar.update(len(idx))

        for start in range(0, len(single), self.batch_size):
            idx = single[start : start + self.batch_size]
            finish(idx, self._forward_plain([items[i] for i in idx]))
        batch: list[list[int]] = []
        for members in [*shared, None]:
            if batch and (members is None or sum(map(len, batch)) + len(members) > self.batch_size):
                idx = [i for m in batch for i in m]
                finish(idx, self._forward_shared([items[m[0]][0] for m in batch], [[items[i][1] for i in m] for m in batch]))
                batch = []
            if members is not None:
                batch.append(members)
        bar.close()
        return out  # type: ignore[return-value]

    def _forward_plain(self, pairs: list[tuple[tuple, list[int]]]) -> list[torch.Tensor]:
        """Logits [n_i, V] predicting each continuation's tokens, from one right-padded forward of context +
        continuation (causal attention: the padding is invisible to the scored positions). The lm_head runs only at
        those positions (it is ~half of a small model's FLOPs)."""
        seqs = [(list(ctx) + cont)[:-1] for ctx, cont in pairs]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.bos_id, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        k = max(len(cont) for _, cont in pairs)
        at = torch.tensor([[min(len(seq) - len(cont) + j, width - 1) for j in range(k)]
                           for seq, (_, cont) in zip(seqs, pairs)])  # fmt: skip
        logits = self.model(ids.to(self._device), logits_at=at).logits  # [B, k, V]
        return [logits[row, : len(cont)] for row, (_, cont) in enumerate(pairs)]

    def _forward_shared(self, contexts: list[tuple], continuations: list[list[list[int]]]) -> list[torch.Tensor]:
        """Contexts G, each with its continuations: prefill the G contexts into the first cache slot of each, copy the
        latent KV to the slots of its other continuations, run all continuations at once from there. Returns logits
        [n, V] per continuation, in order. Same numbers as `_forward_plain` (up to float rounding; see the tests)."""
        from vernacular.model import LatentKVCache

        param = next(self.model.parameters())
        owner = [g for g, conts in enumerate(continuations) for _ in conts]
        conts = [c for cs in continuations for c in cs]
        first = [owner.index(g) for g in range(len(contexts))]
        lengths = torch.tensor([len(ctx) for ctx in contexts])
        k = max(len(c) for c in conts)
        cache = LatentKVCache(self.model.config, len(conts), int(lengths.max()) + k - 1, dtype=param.dtype,
                              device=param.device)  # fmt: skip
        ids = torch.full((len(contexts), int(lengths.max())), self.tokenizer.bos_id, dtype=torch.long)
        for g, ctx in enumerate(contexts):
            ids[g, : len(ctx)] = torch.tensor(ctx, dtype=torch.long)
        first_logits = self.model(ids.to(self._device), cache=cache, slots=torch.tensor(first),
                                  start_pos=torch.zeros(len(contexts), dtype=torch.long),
                                  logits_at=lengths - 1).logits[:, 0]  # [G, V]: each continuation's first token
        src = torch.tensor([first[g] for g in owner], device=param.device)
        for layer in cache.kvpe:
            layer.copy_(layer[src])
        if k == 1:
            return [first_logits[g][None] for g in owner]
        feed = torch.full((len(conts), k - 1), self.tokenizer.bos_id, dtype=torch.long)
        for row, c in enumerate(conts):
            feed[row, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
        rest = self.model(feed.to(self._device), cache=cache, slots=torch.arange(len(conts)),
                          start_pos=lengths[owner]).logits  # fmt: skip  [R, k-1, V]
        return [torch.cat([first_logits[g][None], rest[row, : len(c) - 1]]) for row, (g, c) in enumerate(zip(owner, conts))]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        windows = [(ctx, cont) for _, ctx, cont in requests]
        return self._score(windows, "loglikelihood", disable_tqdm, cache_keys=[key for key, _, _ in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood: BOS, then disjoint windows of `max_length` tokens, each conditioned on the
        tokens before it (lm-eval's `get_rolling_token_windows`, context_len=1, as its `hf` model)."""
        windows, owner = [], []
        for n, (text,) in enumerate(req.args for req in requests):
            for window in get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                                                    max_seq_len=self.max_length, context_len=1):  # fmt: skip
                windows.append(make_disjoint_window(window))
                owner.append(n)
        scores = self._score(windows, "loglikelihood_rolling", disable_tqdm)
        totals = [0.0] * len(requests)
        for n, (ll, _) in zip(owner, scores):
            totals[n] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations through the serving engine, all requests in flight at once (continuous batching).

        gen_kwargs: `until` (stop strings; default EOS), `max_gen_toks` (default 256). Prompts that leave no room for
        `max_gen_toks` keep their last tokens."""
        from vernacular.serve.engine import Engine
        from vernacular.serve.sampling import SamplingParams

        with self._engine_lock:
            if self._engine is None:
                self._engine = Engine(self.model, self.tokenizer, max_batch=self.batch_size,
                                      max_model_len=self.max_length).start()  # fmt: skip
        results: list[str | None] = [None] * len(requests)
        done = threading.Semaphore(0)
        bar = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)

        def collect(n):
            def on_output(out):
                if out.finished:
                    results[n] = out.text
                    done.release()

            return on_output

        for n, req in enumerate(requests):
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(gen_kwargs.get("max_gen_toks", 256))
            max_tokens = min(max_tokens, self.max_length - 1)
            prompt = self.tok_encode(context)[-(self.max_length - max_tokens) :] or [self.prefix_token_id]
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=[s for s in until if s])
            self._engine.submit(prompt, params, collect(n), stream=False)
        for _ in requests:
            done.acquire()
            bar.update(1)
        bar.close()
        for req, text in zip(requests, results):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the generation engine's thread, if one was started."""
        if self._engine is not None:
            self._engine.stop()
            self._engine = None

