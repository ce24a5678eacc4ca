"""Interop with other ecosystems: Hugging Face transformers folders (`hf.py`), exported and imported by the CLI."""

from __future__ import annotations

__all__ = ["export_hf", "import_hf", "load_checkpoint", "save_checkpoint", "InteropError"]


def __getattr__(name: str):
    # Lazy: `vernacular --help` imports the CLI modules of this package and must not pay for torch.
    if name in __all__:
        from vernacular.interop import hf

        return getattr(hf, name)
    raise AttributeError(name)
