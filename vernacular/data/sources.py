"""Sources: where raw text comes from, and the datatrove readers that turn it into Documents.

Every reader here yields *every* record it sees. Records that cannot become a clean document (invalid UTF-8, broken
JSON, a missing text field, empty text) still become a Document, flagged with `metadata["quarantine"] = reason`, so
the first pipeline step can write them to the rejects with their source location: nothing is lost silently. The
upstream datatrove readers skip such records with a log line, which is why these subclasses exist.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from datatrove.data import Document
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.readers.huggingface import HuggingFaceDatasetReader
from datatrove.pipeline.readers.parquet import ParquetReader

from vernacular.data.demo_corpus import DEMO_DIR
from vernacular.data.demo_corpus import LICENCE as DEMO_LICENCE
from vernacular.data.languages import to_iso639_3

SPLITS = ("train", "val")

# (substring of the source name or path, lowercase) -> declared licence (SPDX ids)
KNOWN_LICENCES: tuple[tuple[str, str], ...] = (
    ("demo", DEMO_LICENCE),  # the embedded corpus is NTREX-128 (vernacular/data/demo/README.md)
    ("ntrex", "CC-BY-SA-4.0"),
    ("flores", "CC-BY-SA-4.0"),
    ("sib-200", "CC-BY-SA-4.0"),
    ("tatoeba", "CC-BY-2.0-FR"),
    ("fineweb-2", "ODC-By-1.0"),
    ("fineweb2", "ODC-By-1.0"),
    ("fineweb", "ODC-By-1.0"),
    ("hplt", "CC0-1.0"),
    ("wikipedia", "CC-BY-SA-4.0"),
    ("europarl", "public-domain-EU-reuse"),
)

TXT_EXT = (".txt",)
JSONL_EXT = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".jsonl.zstd")
PARQUET_EXT = (".parquet",)


def default_licence(name: str) -> str:
    low = name.lower()
    for key, licence in KNOWN_LICENCES:
        if key in low:
            return licence
    return "unknown"


def lang_from_path(path: str) -> str | None:
    """`.../deu.txt`, `.../deu.jsonl.gz`, `.../deu_Latn/train/000.parquet` -> `deu` (file name first, then folders)."""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts
    stem = parts[-1].split(".")[0] if parts else ""
    for candidate in [stem, *reversed(parts[:-1])]:
        # only accept full codes here (3 letters or `xxx_Scrp`): a folder called `de` is too ambiguous
        if len(candidate.split("_")[0]) == 3 and (code := to_iso639_3(candidate)):
            return code
    return None


@dataclass
class SourceSpec:
    """One `--source` value, resolved. Spec syntax: `PATH|hf:DATASET[:CONFIG]|demo[::key=value,key=value]`.

    `demo` is the embedded corpus (NTREX-128 articles in the 24 official EU languages, CC BY-SA 4.0, JSONL records
    that carry their own train/val split; see vernacular.data.demo_corpus)."""

    kind: str  # txt | jsonl | parquet | hf | demo
    location: str  # path, or hub dataset name
    name: str
    licence: str
    collected: str
    lang: str | None = None  # declared language for the whole source (else per file / per record)
    text_field: str = "text"
    txt_mode: str = "line"  # line | file
    hf_config: str | None = None
    hf_split: str = "train"
    hf_streaming: bool = True
    extra: dict = field(default_factory=dict)

    def as_record(self) -> dict:
        return {"kind": self.kind, "location": self.location, "licence": self.licence, "collected": self.collected,
                "lang": self.lang, "text_field": self.text_field, "txt_mode": self.txt_mode,
                "hf_config": self.hf_config, "hf_split": self.hf_split}


def parse_source(spec: str, *, licence: str | None = None, collected: str | None = None, text_field: str = "text",
                 txt_mode: str = "line", hf_split: str = "train", hf_streaming: bool = True) -> list[SourceSpec]:
    """Resolve one spec string into one SourceSpec per reader kind (a folder may hold .txt and .jsonl side by side)."""
    body, _, opts_s = spec.partition("::")
    opts = {}
    for item in filter(None, (o.strip() for o in opts_s.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"bad source option {item!r} in {spec!r}: expected key=value")
        opts[key.strip()] = value.strip()
    unknown = set(opts) - {"licence", "license", "lang", "collected", "name", "text_field", "txt_mode", "split"}
    if unknown:
        raise ValueError(f"unknown source option(s) {sorted(unknown)} in {spec!r}")
    collected = opts.get("collected") or collected or dt.date.today().isoformat()
    lang = opts.get("lang")
    if lang is not None and to_iso639_3(lang) is None:
        raise ValueError(f"unknown language {lang!r} in {spec!r}")
    lang = to_iso639_3(lang)
    common = dict(collected=collected, lang=lang, text_field=opts.get("text_field", text_field),
                  txt_mode=opts.get("txt_mode", txt_mode), hf_split=opts.get("split", hf_split),
                  hf_streaming=hf_streaming)
    if common["txt_mode"] not in ("line", "file"):
        raise ValueError(f"txt_mode must be 'line' or 'file', got {common['txt_mode']!r}")
    lic = opts.get("licence") or opts.get("license") or licence

    if body == "demo":  # `demo::lang=deu` reads only that language's file
        name = opts.get("name", "demo")
        location = DEMO_DIR / f"{lang}.jsonl.gz" if lang else DEMO_DIR
        if not location.exists():
            raise ValueError(f"the embedded corpus has no {lang!r} text; it holds the 24 official EU languages")
        return [SourceSpec("demo", str(location), name, lic or DEMO_LICENCE, **common)]
    if body.startswith("hf:"):
        dataset, _, config = body[3:].partition(":")
        if not dataset:
            raise ValueError(f"empty dataset name in {spec!r}")
        name = opts.get("name", body)
        return [SourceSpec("hf", dataset, name, lic or default_licence(dataset), hf_config=config or None, **common)]

    path = Path(body).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"source {body!r} does not exist")
    name = opts.get("name", path.name if path.is_dir() else path.parent.name + "/" + path.name)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    kinds = []
    for kind, exts in (("txt", TXT_EXT), ("jsonl", JSONL_EXT), ("parquet", PARQUET_EXT)):
        if any(f.name.endswith(exts) for f in files):
            kinds.append(kind)
    if not kinds:
        raise ValueError(f"source {body!r} holds no .txt, .jsonl[.gz|.zst] or .parquet files")
    resolved = path.resolve()
    guess = default_licence(f"{resolved.parent.name}/{resolved.name}")  # e.g. corpora/ntrex128, ntrex128/deu.txt
    return [SourceSpec(kind, str(resolved), name, lic or guess, **common)
            for kind in kinds]


def _quarantined(reason: str, source: SourceSpec, location: str, text: str = "", raw: bytes | None = None,
                 offset: int | None = None) -> Document:
    meta = {"quarantine": reason, "source": source.name, "lang": source.lang, "location": location}
    if raw is not None:
        meta["raw_b64"] = base64.b64encode(raw).decode("ascii")
    if offset is not None:
        meta["offset"] = offset  # byte offset in the (compressed) file where the damage starts
    return Document(text=text, id=f"{source.name}/{location}", metadata=meta)


def _document(text: str, source: SourceSpec, location: str, record: dict | None, path_lang: str | None) -> Document:
    record = record or {}
    raw = record.get("lang") or record.get("language")
    # a record that names a language we do not cover keeps that name, so language ID rejects it as unsupported
    declared = source.lang or (to_iso639_3(raw) or str(raw).strip().lower() if raw else None) or path_lang
    meta = {"source": source.name, "lang": declared, "location": location}
    for key in ("url", "date", "dump"):
        if record.get(key) is not None:
            meta[key] = str(record[key])
    if record.get("split") in SPLITS:  # a record that names its split keeps it (aligned held-out sets)
        meta["split"] = record["split"]
    return Document(text=text, id=str(record.get("id") or f"{source.name}/{location}"), metadata=meta)


class DamagedInput(Exception):
    """A compressed stream that is cut short or corrupt: `reason`, and `offset`, the compressed bytes read before the
    damage (the decompressor's own position, to its input-chunk granularity)."""

    def __init__(self, reason: str, offset: int):
        super().__init__(reason)
        self.reason, self.offset, self.partial = reason, offset, b""


def _unreadable(error: OSError) -> str:
    return f"unreadable: {type(error).__name__}: {error.strerror or error}"


class _SpecReaderMixin:
    """Shared by the disk readers: the spec, the relative location `file:line` recorded for every document, and
    files that cannot be opened at all (quarantined as one document: the run goes on)."""

    source: SourceSpec

    def _location(self, filepath: str, line: int | None = None) -> str:
        return filepath if line is None else f"{filepath}:{line + 1}"

    def _open(self, filepath: str):
        """The raw file, or a quarantined Document saying why it cannot be opened."""
        try:
            return self.data_folder.open(filepath, "rb")
        except OSError as e:
            return _quarantined(_unreadable(e), self.source, filepath)


def _glob_for(kind: str) -> list[str]:
    exts = {"txt": TXT_EXT, "jsonl": JSONL_EXT, "parquet": PARQUET_EXT}[kind]
    return [f"**/*{e}" for e in exts]


def _folder_and_glob(source: SourceSpec) -> tuple[str, str | None]:
    path = Path(source.location)
    if path.is_file():
        return str(path.parent), path.name
    return str(path), None


class TxtSourceReader(_SpecReaderMixin, BaseDiskReader):
    """Plain text: one document per line (`txt_mode=line`, blank lines are empty documents) or per file."""

    name = "📄 Txt"

    def __init__(self, source: SourceSpec, glob_pattern: str | None = None, **kwargs):
        folder, single = _folder_and_glob(source)
        super().__init__(folder, glob_pattern=single or glob_pattern or "**/*.txt", add_file_path=False, **kwargs)
        self.source = source

    def read_file(self, filepath: str):
        path_lang = lang_from_path(filepath)
        f = self._open(filepath)
        if isinstance(f, Document):
            yield f
            return
        try:
            with f:
                raw = f.read()
        except OSError as e:
            yield _quarantined(_unreadable(e), self.source, filepath)
            return
        chunks = [raw] if self.source.txt_mode == "file" else raw.split(b"\n")
        if self.source.txt_mode == "line" and chunks and chunks[-1] == b"":
            chunks.pop()  # the final newline ends the last line; it does not start an empty one
        for li, chunk in enumerate(chunks):
            loc = self._location(filepath, None if self.source.txt_mode == "file" else li)
            chunk = chunk.removesuffix(b"\r")
            try:
                text = chunk.decode("utf-8")
            except UnicodeDecodeError:
                yield _quarantined("invalid-utf8", self.source, loc, chunk.decode("utf-8", "backslashreplace"), chunk)
                continue
            yield _document(text, self.source, loc, None, path_lang)


def _decompressed(f, filepath: str, chunk_size: int = 1 << 16):
    """The decompressed bytes of a plain, gzip (`.gz`) or zstd (`.zst`, `.zstd`) file, chunk by chunk, with every byte
    before any damage: raises DamagedInput where the stream is corrupt or ends inside a gzip member / zstd frame.
    (Python's gzip module drops the whole last buffer on a cut-short file, and zstd streams may end silently.)"""
    if filepath.endswith(".gz"):
        kind, errors = "gzip", (zlib.error,)
        new = lambda: zlib.decompressobj(wbits=31)  # noqa: E731
    elif filepath.endswith((".zst", ".zstd")):
        import zstandard

        kind, errors = "zstd", (zstandard.ZstdError,)
        new = lambda: zstandard.ZstdDecompressor().decompressobj()  # noqa: E731
    else:
        while chunk := f.read(chunk_size):
            yield chunk
        return
    d, offset, inside = new(), 0, False
    while chunk := f.read(4096):  # small feeds: a call that fails loses the output of at most 4 KiB of input
        while chunk:
            try:
                out = d.decompress(chunk)
            except errors as e:
                raise DamagedInput(f"corrupt-{kind}: {e}", offset) from None
            if out:
                yield out
            if d.eof:  # end of one gzip member / zstd frame: another may follow (concatenated streams)
                rest = d.unused_data
                offset += len(chunk) - len(rest)
                chunk, d, inside = rest, new(), False
            else:
                offset += len(chunk)
                chunk, inside = b"", True
    if inside:
        raise DamagedInput(f"truncated-{kind}: the file ends inside a compressed stream", offset)


def _binary_lines(chunks):
    """Lines as raw bytes from a stream of byte chunks: decoding happens per line, so one bad line cannot take its
    neighbours with it. On DamagedInput the unfinished line travels with the exception (`partial`)."""
    pending = b""
    try:
        for chunk in chunks:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            yield from complete
    except DamagedInput as e:
        e.partial = pending
        raise
    if pending:
        yield pending


class JsonlSourceReader(_SpecReaderMixin, BaseDiskReader):
    """JSON lines, plain / gzip / zstd: one object per line with a text field; `lang`/`language` field optional."""

    name = "🐿 Jsonl"

    def __init__(self, source: SourceSpec, **kwargs):
        folder, single = _folder_and_glob(source)
        super().__init__(folder, glob_pattern=single, add_file_path=False, **kwargs)
        self.source = source

    def read_file(self, filepath: str):
        if not filepath.endswith(JSONL_EXT):
            return
        path_lang = lang_from_path(filepath)
        f = self._open(filepath)
        if isinstance(f, Document):
            yield f
            return
        li = -1
        try:
            with f:
                for li, line in enumerate(_binary_lines(_decompressed(f, filepath))):
                    yield self._record(line, self._location(filepath, li), path_lang)
        except DamagedInput as e:
            yield _quarantined(e.reason, self.source, self._location(filepath, li + 1),
                               e.partial.decode("utf-8", "backslashreplace"), e.partial, offset=e.offset)
        except OSError as e:  # an I/O error in the middle of the file
            yield _quarantined(_unreadable(e), self.source, self._location(filepath, li + 1))

    def _record(self, line: bytes, loc: str, path_lang: str | None) -> Document:
        line = line.rstrip(b"\r\n")
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            return _quarantined("invalid-utf8", self.source, loc, line.decode("utf-8", "backslashreplace"), line)
        if not decoded.strip():
            return _quarantined("empty", self.source, loc)
        try:
            record = json.loads(decoded)
        except json.JSONDecodeError:
            return _quarantined("broken-json", self.source, loc, decoded)
        if not isinstance(record, dict):
            return _quarantined("broken-json", self.source, loc, decoded)
        text = record.get(self.source.text_field)
        if not isinstance(text, str):
            return _quarantined("missing-text-field", self.source, loc, decoded)
        return _document(text, self.source, loc, record, path_lang)


class ParquetSourceReader(_SpecReaderMixin, ParquetReader):
    """Parquet through datatrove's reader; rows without the text field are quarantined instead of skipped."""

    def __init__(self, source: SourceSpec, **kwargs):
        folder, single = _folder_and_glob(source)
        super().__init__(folder, glob_pattern=single or "**/*.parquet", text_key=source.text_field,
                         read_metadata=True, **kwargs)
        self.source = source

    def read_file(self, filepath: str):
        """Row group by row group (datatrove's reader batches across row groups, so one damaged group would take the
        rows before it along); a file that is not valid Parquet, or a row group that cannot be decoded, becomes one
        quarantined document at the first row that could not be read: the rows before it are kept."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        f = self._open(filepath)
        if isinstance(f, Document):
            yield f
            return
        row = 0
        try:
            with f, pq.ParquetFile(f) as pqf:
                for group in range(pqf.num_row_groups):
                    for batch in pqf.iter_batches(batch_size=self.batch_size, row_groups=[group]):
                        with self.track_time("batch"):
                            documents = [self.get_document_from_dict(r, filepath, row + i)
                                         for i, r in enumerate(batch.to_pylist())]
                        row += len(documents)
                        yield from documents
        except (OSError, pa.ArrowException) as e:  # not Parquet (ArrowInvalid), a corrupt page (OSError)
            yield _quarantined(f"bad-parquet: {e}", self.source, self._location(filepath, row))

    def get_document_from_dict(self, data: dict, source_file: str, id_in_file: int | str):
        loc = self._location(source_file, int(id_in_file))
        text = data.get(self.source.text_field)
        if not isinstance(text, str):
            return _quarantined("missing-text-field", self.source, loc,
                                json.dumps({k: str(v) for k, v in data.items()}, ensure_ascii=False))
        return _document(text, self.source, loc, data, lang_from_path(source_file))


class HubSourceReader(HuggingFaceDatasetReader):
    """Hugging Face hub datasets via `datasets.load_dataset(name, config, split=...)`: datatrove's own hub reader.

    The config name carries the language on multilingual hub sets (FineWeb-2: `deu_Latn`)."""

    def __init__(self, source: SourceSpec, **kwargs):
        options = {"split": source.hf_split}
        if source.hf_config:
            options["name"] = source.hf_config
        super().__init__(source.location, dataset_options=options, streaming=source.hf_streaming,
                         text_key=source.text_field, **kwargs)
        self.source = source
        self.config_lang = to_iso639_3(source.hf_config) if source.hf_config else None

    def get_document_from_dict(self, data: dict, source_file: str, id_in_file: int | str):
        loc = f"{source_file}:{self.source.hf_config or 'default'}:{self.source.hf_split}:{id_in_file}"
        text = data.get(self.source.text_field)
        if not isinstance(text, str):
            return _quarantined("missing-text-field", self.source, loc,
                                json.dumps({k: str(v) for k, v in data.items()}, ensure_ascii=False))
        return _document(text, self.source, loc, data, self.config_lang)


class HubUnreachable(ValueError):
    """A hub source that can be neither streamed nor found in the local cache (no internet, or not downloaded)."""


def _hub_host() -> tuple[str, int]:
    import os
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def check_hub_sources(specs: list[SourceSpec], timeout: float = 5.0) -> None:
    """Fail fast, in one line, when a hub source cannot be read: before the workers start (whose datatrove logs would
    bury the cause under retries and tracebacks). A source that is a local folder (a mirror in the hub's layout) is
    read as such; with `HF_HUB_OFFLINE=1` the dataset must be in the local `datasets` cache; otherwise the hub must be
    reachable (one TCP connection, `timeout` seconds, instead of huggingface_hub's retries)."""
    import os
    import socket

    remote = [s for s in specs if s.kind == "hf" and not Path(s.location).expanduser().exists()]
    if not remote:
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    for s in remote:
        what = f"hub dataset {s.location}" + (f" (config {s.hf_config})" if s.hf_config else "")
        how = (f"to run without internet, download it where there is internet (`huggingface-cli download "
               f"{s.location} --repo-type dataset --local-dir DIR`, or only `--include 'data/{s.hf_config}/*' "
               f"README.md`) and use `--source hf:DIR{':' + s.hf_config if s.hf_config else ''}`, or load it once "
               f"with `datasets` into the cache and rerun with HF_HUB_OFFLINE=1 --no-hf-streaming (docs/data.md)")
        if not offline:
            host, port = _hub_host()
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                continue
            except OSError as e:
                raise HubUnreachable(f"{what} could not be reached: no connection to {host}:{port} "
                                     f"({getattr(e, 'strerror', None) or e}); {how}") from None
        import datasets

        try:
            datasets.load_dataset_builder(s.location, s.hf_config)
        except Exception as e:  # noqa: BLE001 (datasets raises ConnectionError, FileNotFoundError, ValueError, ...)
            raise HubUnreachable(f"{what} is not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it "
                                 f"({type(e).__name__}); {how}") from None


def make_reader(source: SourceSpec, *, progress: bool = False):
    if source.kind == "txt":
        return TxtSourceReader(source, file_progress=progress)
    if source.kind in ("jsonl", "demo"):
        return JsonlSourceReader(source, file_progress=progress)
    if source.kind == "parquet":
        return ParquetSourceReader(source, file_progress=progress)
    if source.kind == "hf":
        return HubSourceReader(source, doc_progress=progress)
    raise ValueError(f"unknown source kind {source.kind!r}")

