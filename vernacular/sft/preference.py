"""Language preference tuning: DPO on the chat model's own wrong-language answers (`vernacular sft --language-dpo N`).

Marchisio et al. (2024, "Understanding and Mitigating Language Confusion in LLMs") mitigate language confusion with
preference tuning. Here the pairs are on-policy: the fine-tuned model answers its training conversations' opening
questions greedily through the serving engine; every answer that fails the Language Confusion Benchmark's line rule
(`confusion.line_level_pass`: a line identified as another language) becomes the *rejected* side of a pair whose
*chosen* side is the conversation's own reference answer. Direct Preference Optimization (Rafailov et al., 2023)
then trains the model against a frozen copy of itself (the reference), with the sigmoid loss and `beta` of TRL's
`DPOTrainer`, plus `rpo_alpha` x the chosen answers' NLL per token (TRL's `rpo_alpha`, after Pang et al., 2024), which
keeps the reference answers likely while the wrong-language ones are pushed down.

Why on-policy: the 10 M speedrun model merges close neighbours (Slovak into Czech, Croatian into Slovenian,
Portuguese into Spanish) into one mode that greedy decoding falls into. Pairs that only contrast a translation
(rejected: the neighbour's rendering of the same line) leave that mode in place (BENCHMARKS.md, "Language confusion");
the model's own wrong answers are that mode.

The phase runs after fine-tuning (and WiSE-FT) on the main rank, deterministically from its seed: it writes
`checkpoints/sft/dpo-<start checkpoint>/` (same layout and checksums as every checkpoint, no optimizer state) and
names it `latest`, so serving and export take it; `--resume` of the SFT stage still continues from the fine-tuned
`step_*` checkpoint, and a killed DPO phase is simply run again. Per-step metrics go to `metrics/sft_dpo.jsonl`.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vernacular.model.transformer import IGNORE_INDEX


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's sigmoid loss (Rafailov et al., 2023, eq. 7; TRL's `loss_type="sigmoid"`), averaged over the pairs.

    All inputs [P]: summed log-probabilities (nats) of each pair's chosen / rejected answer tokens under the policy
    and the frozen reference. Returns -log sigmoid(beta * ((pc - rc) - (pr - rr))), a scalar."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).mean()


def answer_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability [B] of the labelled tokens, number of labelled tokens [B]) of each row.
    `input_ids`, `labels` [B, T]; labels are IGNORE_INDEX outside the answer (as `conversation_tensors` makes them).
    The LM head runs only at the answer positions (`Transformer.forward`'s `logits_at`)."""
    keep = labels != IGNORE_INDEX
    counts = keep.sum(1)
    width = max(1, int(counts.max()))
    # each row's answer positions, in order, padded with position 0 (masked out below)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width)[None] < counts[:, None]
    index = torch.where(valid, order, 0)
    logits = model(input_ids, logits_at=index).logits.float()
    targets = labels.gather(1, index).clamp(min=0)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
    return (logp * valid).sum(1), counts


def _batch(encodings: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded next-token inputs and answer-only labels [B, T] of `ChatEncoding`s (`conversation_tensors`)."""
    from .data import PAD_ID, conversation_tensors

    rows = [conversation_tensors(e)[:2] for e in encodings]
    width = max(len(inputs) for inputs, _ in rows)
    ids = torch.tensor([inputs + [PAD_ID] * (width - len(inputs)) for inputs, _ in rows], dtype=torch.long)
    labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in rows], dtype=torch.long)
    return ids, labels


def language_preference_pairs(model: torch.nn.Module, tokenizer_dir: str | Path, conversations: list,
                              max_tokens: int = 32, max_len: int = 512) -> tuple[list[tuple], dict[str, int]]:
    """On-policy pairs: (chosen, rejected) `ChatEncoding`s for every conversation whose opening question `model`
    answers (greedy, `max_tokens`) in another language by LCB's line rule. Conversations with tools, without a
    language, or whose first reply is not an assistant message are skipped, as are pairs longer than `max_len`
    tokens. Returns (pairs, {language: wrong answers})."""
    from vernacular.serve.text import ServingTokenizer
    from vernacular.tokenizer.chat import content_text, encode_chat

    from .confusion import greedy_answers, line_level_pass, question

    tokenizer = ServingTokenizer(tokenizer_dir)
    items = []
    for c in conversations:
        q = question(c.messages)
        if c.tools or not c.lang or len(q) >= len(c.messages) or c.messages[len(q)]["role"] != "assistant":
            continue
        reference = content_text(c.messages[len(q)]["content"])
        items.append((c.lang, q, reference, encode_chat(tokenizer.tokenizer, q, True).ids))
    answers = greedy_answers(model, tokenizer, [i[3] for i in items], max_tokens, max_batch=64)
    pairs, wrong = [], {}
    for (lang, q, reference, _), answer in zip(items, answers):
        if line_level_pass(answer.text, lang) is not False:
            continue
        wrong[lang] = wrong.get(lang, 0) + 1
        chosen, rejected = (encode_chat(tokenizer.tokenizer, q + [{"role": "assistant", "content": text}])
                            for text in (reference, answer.text))
        if max(len(chosen.ids), len(rejected.ids)) <= max_len:
            pairs.append((chosen, rejected))
    return pairs, dict(sorted(wrong.items()))


def language_dpo(run, start: Path, conversations: list, steps: int, beta: float = 0.1, lr: float = 1e-4,
                 rpo_alpha: float = 1.0, batch_size: int = 8, warmup: int = 5, seed: int = 0,
                 max_tokens: int = 32, max_len: int = 512, progress: bool = True) -> dict[str, Any]:
    """Language preference tuning of the checkpoint `start` (see the module); returns {"checkpoint" (the new one, or
    `start` when the model answered every question in its language), "pairs", "wrong_answers" {lang: n}, "steps",
    "beta", "lr", "rpo_alpha", "final": last step's metrics}. AdamW at `lr` with `warmup` steps, then linear decay to
    0; gradient norm clipped at 1; `batch_size` pairs per step, reshuffled every pass (seeded)."""
    from tqdm import tqdm

    from vernacular.serve.loading import load_model_for_serving
    from vernacular.train import checkpoint as ckpt
    from vernacular.train.metrics import MetricsLogger

    torch.manual_seed(seed)
    rng = random.Random(seed)
    policy, _ = load_model_for_serving(start)
    reference, _ = load_model_for_serving(start)
    reference.eval().requires_grad_(False)
    pairs, wrong = language_preference_pairs(reference, run.tokenizer, conversations, max_tokens, max_len)
    result: dict[str, Any] = {"pairs": len(pairs), "wrong_answers": wrong, "steps": 0, "beta": beta, "lr": lr,
                              "rpo_alpha": rpo_alpha, "start": str(start), "checkpoint": str(start)}
    print(f"sft: language DPO: {len(pairs)} wrong-language answers to the training questions as rejected answers "
          f"({', '.join(f'{k} {v}' for k, v in wrong.items()) or 'none'})", file=sys.stderr, flush=True)
    if not pairs:
        return result
    # the reference is frozen: its log-probabilities of every pair are computed once (TRL's precompute_ref_log_probs)
    reference_logp = torch.empty(len(pairs), 2)
    with torch.no_grad():
        for start_row in range(0, len(pairs), batch_size):
            chunk = pairs[start_row:start_row + batch_size]
            ids, labels = _batch([c for c, _ in chunk] + [r for _, r in chunk])
            logp, _ = answer_logprobs(reference, ids, labels)
            reference_logp[start_row:start_row + len(chunk)] = logp.view(2, -1).T
    del reference
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    order: list[int] = []
    logger = MetricsLogger(run.metrics / "sft_dpo.jsonl")
    logger.truncate_after(0)
    bar = tqdm(total=steps, unit="step", desc="language DPO", file=sys.stderr, disable=not progress)
    for step in range(steps):
        if len(order) < min(batch_size, len(pairs)):
            order += rng.sample(range(len(pairs)), len(pairs))
        rows = order[:batch_size]
        del order[:batch_size]
        chunk = [pairs[i] for i in rows]
        ids, labels = _batch([c for c, _ in chunk] + [r for _, r in chunk])
        step_lr = lr * min(1.0, (step + 1) / max(1, warmup)) * (1 - step / steps)
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        logp, n_tokens = answer_logprobs(policy, ids, labels)
        ref_logp = reference_logp[rows].T.reshape(-1)
        p = len(chunk)
        loss_dpo = dpo_loss(logp[:p], logp[p:], ref_logp[:p], ref_logp[p:], beta)
        nll = -logp[:p].sum() / n_tokens[:p].sum()
        loss = loss_dpo + rpo_alpha * nll
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        margin = ((logp[:p] - ref_logp[:p]) - (logp[p:] - ref_logp[p:])).detach()
        record = {"step": step + 1, "loss": float(loss.detach()), "dpo_loss": float(loss_dpo.detach()),
                  "chosen_nll": float(nll.detach()),
                  "reward_accuracy": float((margin > 0).float().mean()), "reward_margin": float(beta * margin.mean()),
                  "lr": step_lr}
        logger.log(record)
        bar.set_postfix(dpo=f"{record['dpo_loss']:.3f}", acc=f"{record['reward_accuracy']:.2f}", refresh=False)
        bar.update(1)
    bar.close()
    logger.close()
    weights = {k: v.detach().contiguous() for k, v in policy.state_dict().items()}
    record = {k: result[k] for k in ("pairs", "beta", "lr", "rpo_alpha")} | {"steps": steps, "start": str(start)}
    path = ckpt.save_derived_checkpoint(start, weights, "dpo", "language_dpo", record)
    result.update(checkpoint=str(path), steps=steps, final=record)
    return result
