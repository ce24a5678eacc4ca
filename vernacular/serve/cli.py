"""`vernacular serve --run-dir DIR`: the OpenAI-compatible server (FastAPI + uvicorn) over a run's checkpoint."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", help="run directory: serves its model (the latest chat fine-tuning checkpoint if "
                        "any, else the latest pretraining checkpoint) and its tokenizer")
    parser.add_argument("--checkpoint", help="checkpoint folder, or a step (number or step_N folder) of the run")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' (default: env VERNACULAR_API_KEY; none = open)")
    parser.add_argument("--max-batch", type=int, default=32, help="requests decoded together (cache slots)")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="context length per request (default: the model's max_position_embeddings)")
    parser.add_argument("--max-tokens-limit", type=int, default=4096, help="most tokens one request may generate")
    parser.add_argument("--max-concurrent", type=int, default=256,
                        help="generation requests in flight (queued + running); more get HTTP 429")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get HTTP 413")
    parser.add_argument("--request-timeout", type=float, default=None,
                        help="seconds one generation request may take before it is aborted (HTTP 408; default: none)")
    parser.add_argument("--parse-special-tokens", action="store_true",
                        help="in raw /v1/completions and /tokenize prompts, text such as <|end|> becomes the control "
                             "token (vLLM's behaviour); default: it stays plain text, as in chat messages")
    parser.add_argument("--model-name", default=None, help="model id clients use (default: the run directory's name)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seeds requests that do not give their own seed")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def main(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from vernacular.serve.api import ServerLimits, create_app
    from vernacular.serve.engine import Engine
    from vernacular.serve.loading import CheckpointError, find_tokenizer_dir, load_model_for_serving, resolve_checkpoint
    from vernacular.serve.text import ServingTokenizer

    if args.run_dir is None and args.checkpoint is None:
        print("error: give --run-dir DIR (or --checkpoint FOLDER)", file=sys.stderr)
        return 2
    for name in ("max_batch", "max_tokens_limit", "max_concurrent", "max_body_bytes"):
        if getattr(args, name) <= 0:
            print(f"error: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        checkpoint = resolve_checkpoint(args.run_dir, args.checkpoint)
        model, checkpoint = load_model_for_serving(checkpoint, dtype=getattr(torch, args.dtype))
        tokenizer = ServingTokenizer(find_tokenizer_dir(checkpoint, args.run_dir))
        engine = Engine(model, tokenizer, max_batch=args.max_batch, max_model_len=args.max_model_len, seed=args.seed)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from pathlib import Path

    name = args.model_name or Path(args.run_dir or checkpoint).resolve().name
    limits = ServerLimits(api_key=args.api_key or os.environ.get("VERNACULAR_API_KEY") or None,
                          max_tokens_limit=args.max_tokens_limit, max_concurrent=args.max_concurrent,
                          max_body_bytes=args.max_body_bytes, request_timeout=args.request_timeout,
                          parse_special_tokens=args.parse_special_tokens)  # fmt: skip
    app = create_app(engine, model_name=name, limits=limits)

    class Server(uvicorn.Server):
        """On SIGINT/SIGTERM also end the engine, so in-flight streams finish ("abort") instead of holding shutdown."""

        def handle_exit(self, sig, frame):
            engine.request_stop()
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets=None):
            await super().shutdown(sockets)
            # uvicorn then re-raises the signal, so the exit status says "terminated by SIGTERM", as it should
            print("vernacular serve: shut down cleanly", file=sys.stderr, flush=True)

    print(f"serving {name} from {checkpoint} on http://{args.host}:{args.port}/v1 "
          f"({'API key required' if limits.api_key else 'no API key'})", file=sys.stderr, flush=True)  # fmt: skip
    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    server.run()
    return 0
