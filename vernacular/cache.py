"""The user-wide cache of derived files that are slow to build and cheap to key (language-ID tables, decontamination
indexes): `$VERNACULAR_CACHE`, else `$XDG_CACHE_HOME/vernacular`, else `~/.cache/vernacular` (the XDG base directory
convention). Everything in it can be deleted at any time; a reader that finds a file missing or unreadable rebuilds
it, and a cache that cannot be written is skipped."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from vernacular.run import atomic_write_bytes

# what reading a damaged or foreign cache entry with `np.load(..., allow_pickle=False)` can raise: rebuild then
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def cache_dir(kind: str) -> Path:
    """`<cache root>/<kind>` (not created)."""
    root = os.environ.get("VERNACULAR_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vernacular"
    return Path(root) / kind


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write `arrays` as one uncompressed .npz at `path`, atomically (`atomic_write_bytes`: readers never see half a
    file); read it back with `np.load(path, allow_pickle=False)`."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
