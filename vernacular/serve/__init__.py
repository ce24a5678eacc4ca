"""Serving: the continuous-batching engine over the MLA latent cache, and the OpenAI-compatible API in front of it.

    from vernacular.serve import Engine, SamplingParams, ServingTokenizer, load_model_for_serving

Importing this package stays cheap (the CLI imports `vernacular.serve.cli` just to build its parser); the names below
load torch and FastAPI only when first used.
"""

from __future__ import annotations

_EXPORTS = {
    "Engine": "vernacular.serve.engine",
    "RequestError": "vernacular.serve.engine",
    "StepOutput": "vernacular.serve.engine",
    "Completion": "vernacular.serve.engine",
    "SamplingParams": "vernacular.serve.sampling",
    "ServingTokenizer": "vernacular.serve.text",
    "TextStream": "vernacular.serve.text",
    "load_model_for_serving": "vernacular.serve.loading",
    "resolve_checkpoint": "vernacular.serve.loading",
    "find_tokenizer_dir": "vernacular.serve.loading",
    "CheckpointError": "vernacular.serve.loading",
    "create_app": "vernacular.serve.api",
    "ServerLimits": "vernacular.serve.api",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vernacular.serve' has no attribute {name!r}")
