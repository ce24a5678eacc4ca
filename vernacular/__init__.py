"""Vernacular: an open LLM factory for Europe's languages.

The short Python API (see README):

    from vernacular import ModelConfig, build_model
    model = build_model("tiny")                    # preset name, TOML/JSON path, dict or ModelConfig
    out = model(ids[:, :-1], labels=ids[:, 1:])    # out.logits, out.loss, out.main_loss, out.mtp_loss, out.balance_loss
"""

import os

__version__ = "0.1.0"

# MKL's fp32 GEMMs may round differently depending on memory alignment, so two runs of the same command could differ
# in the last bit. Strict conditional numerical reproducibility makes CPU runs (and a resume after a crash)
# bit-identical. MKL reads this once, when torch loads it, so it is set on import; a user's own setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def __getattr__(name):
    # Lazy so that `import vernacular` (and the CLI's parser) stays light: torch loads only when a model is wanted.
    if name in ("ModelConfig", "build_model"):
        from vernacular.model import ModelConfig, build_model

        return {"ModelConfig": ModelConfig, "build_model": build_model}[name]
    raise AttributeError(name)
