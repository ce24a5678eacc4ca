"""Vernacular: an open LLM factory for Europe's languages.

The short Python API (see README):

    from vernacular import ModelConfig, build_model
    model = build_model("tiny")                    # preset name, TOML/JSON path, dict or ModelConfig
    out = model(input_ids, labels=input_ids)       # out.logits, out.loss, out.main_loss, out.mtp_loss, out.balance_loss
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import vernacular` (and the CLI's parser) stays light: torch loads only when a model is wanted.
    if name in ("ModelConfig", "build_model"):
        from vernacular.model import ModelConfig, build_model

        return {"ModelConfig": ModelConfig, "build_model": build_model}[name]
    raise AttributeError(name)
