"""What an invocation of ``data_tools.preprocess`` reads, in which order, and in which pieces.

``--input PATH [PATH ...]``: each PATH is a file, a directory or a (quoted) glob.

- a file: ``.jsonl``/``.json``/``.ndjson`` (optionally ``.gz`` or ``.zst``), ``.parquet``,
  ``.arrow`` (a datasets cache/shard file) or ``.txt`` (one document);
- a directory: every supported file below it except plain ``.json`` (metadata, as a rule);
  hidden entries are skipped, other files ignored; a ``datasets`` ``save_to_disk`` directory (``state.json``, ``dataset_info.json``
  or ``dataset_dict.json``) is read as that dataset's arrow files;
- a glob (``*``, ``?``, ``[``; ``**`` recursive): every match, as above.

All files are deduplicated (by real path) and sorted by absolute path: the documents of the
output follow that order, then the order inside each file, whatever the number of workers.

Work is cut into :class:`Piece` objects: a plain ``.jsonl`` file in byte ranges of about
``piece_bytes``, a parquet file in groups of row groups of about that size, runs of ``.txt``
files in groups, and every other file (compressed streams cannot be split) whole.  Pieces are
a function of the files and ``piece_bytes`` alone, and the output never depends on them.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import sys
from dataclasses import dataclass

from data_tools._errors import DataToolError

SUFFIX_FORMATS = (
    ((".jsonl", ".json", ".ndjson"), "jsonl"),
    ((".jsonl.gz", ".json.gz", ".ndjson.gz"), "jsonl.gz"),
    ((".jsonl.zst", ".json.zst", ".jsonl.zstd", ".ndjson.zst"), "jsonl.zst"),
    ((".parquet",), "parquet"),
    ((".arrow",), "arrow"),
    ((".txt",), "txt"),
)
HF_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
GLOB_CHARACTERS = "*?["
DEFAULT_PIECE_BYTES = 32 * 1024 * 1024
TXT_GROUP_FILES = 256  # .txt documents per piece (each is tiny, a piece per file would cost more)

# How the records of a piece are read (the worker's side is data_tools._records).
LINES, ROWS, TXT, STREAM = "lines", "rows", "txt", "stream"
KIND_OF_FORMAT = {"jsonl": LINES, "jsonl.gz": LINES, "jsonl.zst": LINES, "parquet": ROWS, "arrow": ROWS,
                  "txt": TXT}


@dataclass(frozen=True)
class InputFile:
    """One input file (or stream shard): where it is, how to read it, what it looked like."""

    path: str
    format: str  # a value of SUFFIX_FORMATS, or "stream" for a --hf-dataset --streaming shard
    size: int = 0
    mtime_ns: int = 0
    label: str = ""  # format name for the meta file (hf_disk / hf_dataset for datasets' arrow files)
    stream: tuple = ()  # "stream" only: (name, config, split, shard index, shard count)

    def identity(self) -> list:
        """What must be unchanged for a resumed run to reuse the output of this file."""
        return [self.path, self.size, self.mtime_ns]


@dataclass(frozen=True)
class Piece:
    """A unit of work: one worker reads, filters and tokenizes it into part files."""

    index: int
    kind: str  # LINES, ROWS, TXT or STREAM
    format: str
    paths: tuple[str, ...]
    first_file: int  # index of its (first) file in the sorted file list
    file_count: int = 1  # files it covers (more than one only for .txt groups)
    start: int = 0  # LINES: first byte; ROWS: first row group
    stop: int = -1  # LINES: end byte (exclusive); ROWS: end row group; -1: to the end
    ends_file: bool = True  # the last piece of its file(s)
    nbytes: int = 0  # bytes on disk, for the progress bar
    columns: tuple[str, ...] = ()  # ROWS: the columns to read
    stream: tuple = ()  # STREAM: (name, config, split, shard index, shard count)


def file_format(path: str) -> str | None:
    """The input format of ``path`` from its name, or None for an unsupported file."""
    lower = path.lower()
    for suffixes, name in SUFFIX_FORMATS:
        if lower.endswith(suffixes):
            return name
    return None


def is_save_to_disk_dir(path: str) -> bool:
    """True for a directory written by ``datasets``' ``save_to_disk``."""
    return any(os.path.isfile(os.path.join(path, marker)) for marker in HF_DATASET_MARKERS)


def _stat_file(path: str, fmt: str, label: str = "") -> InputFile:
    stat = os.stat(path)
    return InputFile(path, fmt, stat.st_size, stat.st_mtime_ns, label or fmt)


def save_to_disk_files(path: str) -> list[InputFile]:
    """The arrow files of a ``save_to_disk`` directory, in the dataset's row order."""
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        raise DataToolError(f"{path}: cannot load the save_to_disk dataset ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded.keys())
        if len(splits) != 1:
            raise DataToolError(
                f"{path}: dataset has splits {splits}; pass the split directory, e.g. {os.path.join(path, splits[0])}"
            )
        loaded = loaded[splits[0]]
    return dataset_arrow_files(loaded, path, "hf_disk")


def dataset_arrow_files(dataset, where: str, label: str) -> list[InputFile]:
    """The arrow files holding a (non-streaming) ``datasets.Dataset``, in row order."""
    # save_to_disk flattens any indices mapping and a fresh load_dataset has none, so the rows
    # are exactly the arrow files' rows in cache_files order.
    if getattr(dataset, "_indices", None) is not None:
        raise DataToolError(f"{where}: dataset has an indices mapping (select/shuffle); save it with save_to_disk first")
    files = [entry["filename"] for entry in dataset.cache_files]
    if not files:
        raise DataToolError(f"{where}: dataset is held in memory, not in arrow files")
    return [_stat_file(name, "arrow", label) for name in files]


def _walk(directory: str) -> list[InputFile]:
    if is_save_to_disk_dir(directory):
        return save_to_disk_files(directory)
    found: list[InputFile] = []
    for root, dirs, names in os.walk(directory):
        keep = []
        for name in sorted(dirs):
            if name.startswith("."):
                continue
            sub = os.path.join(root, name)
            if is_save_to_disk_dir(sub):
                found.extend(save_to_disk_files(sub))
            else:
                keep.append(name)
        dirs[:] = keep
        for name in names:
            fmt = file_format(name)
            # plain .json files below a directory are usually metadata (meta.json, config.json,
            # an earlier output's .meta.json), not JSON lines: they are inputs only when named
            if fmt and not name.startswith(".") and not name.lower().endswith(".json"):
                found.append(_stat_file(os.path.join(root, name), fmt))
    return found


def _expand(spec: str) -> list[InputFile]:
    if os.path.isdir(spec):
        found = _walk(spec)
        if not found:
            raise DataToolError(f"{spec}: directory has no supported input files "
                                "(.jsonl[.gz|.zst], .json.gz, .parquet, .arrow, .txt) and is not a save_to_disk dataset")
        return found
    if os.path.isfile(spec):
        fmt = file_format(spec)
        if fmt is None:
            raise DataToolError(
                f"{spec}: unknown input type (expected .jsonl, .jsonl.gz, .json.gz, .jsonl.zst, .parquet, .arrow, "
                ".txt, a directory of them or a save_to_disk dataset directory)"
            )
        return [_stat_file(spec, fmt)]
    if any(ch in spec for ch in GLOB_CHARACTERS):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise DataToolError(f"{spec}: no file matches this pattern")
        found = []
        for match in matches:
            if os.path.isdir(match):
                found.extend(_walk(match))
            elif file_format(match):
                found.append(_stat_file(match, file_format(match)))
        if not found:
            raise DataToolError(f"{spec}: the pattern matches no supported input file")
        return found
    raise DataToolError(f"{spec}: input not found")


def resolve_inputs(specs: list[str]) -> list[InputFile]:
    """Every input file named by ``specs``, deduplicated and sorted by absolute path."""
    by_real: dict[str, InputFile] = {}
    duplicates = 0
    for spec in specs:
        for item in _expand(os.fspath(spec)):
            item = dataclasses.replace(item, path=os.path.abspath(item.path))
            real = os.path.realpath(item.path)
            if real in by_real:
                duplicates += 1
                continue
            by_real[real] = item
    if duplicates:
        print(f"note: {duplicates} input files were named more than once; each is read once", file=sys.stderr)
    return sorted(by_real.values(), key=lambda f: f.path)


def files_fingerprint(files: list[InputFile]) -> str:
    """Hash of the names, sizes and mtimes of the input files, in order."""
    digest = hashlib.sha256()
    for item in files:
        digest.update(f"{item.path}:{item.size}:{item.mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


# ------------------------------------------------------------------------------------ pieces


def open_arrow(path: str):
    """A record-batch reader of an arrow file: the IPC stream format datasets writes, or the file format."""
    import pyarrow as pa

    source = pa.memory_map(path)
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source)


def _check_columns(path: str, names: list[str], json_key: str, filter_roots: set[str]) -> None:
    if json_key not in names:
        raise DataToolError(f"{path}: missing column '{json_key}' (columns: {', '.join(names)}); set --json-key")
    for root in sorted(filter_roots - set(names)):
        raise DataToolError(f"{path}: --filter names column '{root}', which is not there (columns: {', '.join(names)})")


def _parquet_pieces(item: InputFile, file_index: int, piece_bytes: int, columns: tuple, json_key: str,
                    filter_roots: set[str], index: int) -> list[Piece]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(item.path).metadata
        names = pq.read_schema(item.path).names
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataToolError(f"{item.path}: not a readable parquet file ({exc})") from None
    _check_columns(item.path, names, json_key, filter_roots)
    groups, start, size = [], 0, 0
    for group in range(metadata.num_row_groups):
        size += metadata.row_group(group).total_byte_size
        if size >= piece_bytes:
            groups.append((start, group + 1))
            start, size = group + 1, 0
    if start < metadata.num_row_groups or not groups:
        groups.append((start, metadata.num_row_groups))
    share = item.size // max(1, len(groups))
    return [Piece(index + k, ROWS, item.format, (item.path,), file_index, start=a, stop=b, ends_file=k == len(groups) - 1,
                  nbytes=share, columns=columns)
            for k, (a, b) in enumerate(groups)]


def _line_pieces(item: InputFile, file_index: int, piece_bytes: int, index: int) -> list[Piece]:
    if item.format != "jsonl" or item.size <= piece_bytes:
        return [Piece(index, LINES, item.format, (item.path,), file_index, nbytes=item.size)]
    bounds = list(range(0, item.size, piece_bytes)) + [item.size]
    return [Piece(index + k, LINES, item.format, (item.path,), file_index, start=a, stop=b,
                  ends_file=b == item.size, nbytes=b - a)
            for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def plan_pieces(files: list[InputFile], json_key: str, filter_roots: set[str],
                piece_bytes: int = DEFAULT_PIECE_BYTES) -> list[Piece]:
    """Cut ``files`` into pieces (see the module docstring); checks parquet/arrow columns first."""
    columns = tuple(dict.fromkeys([json_key, *sorted(filter_roots)]))
    pieces: list[Piece] = []
    position = 0
    while position < len(files):
        item = files[position]
        index = len(pieces)
        if item.format == "txt":
            end = position
            while end < len(files) and files[end].format == "txt" and end - position < TXT_GROUP_FILES:
                end += 1
            group = files[position:end]
            pieces.append(Piece(index, TXT, "txt", tuple(f.path for f in group), position, file_count=len(group),
                                nbytes=sum(f.size for f in group)))
            position = end
            continue
        if item.format == "parquet":
            pieces.extend(_parquet_pieces(item, position, piece_bytes, columns, json_key, filter_roots, index))
        elif item.format == "arrow":
            try:
                names = open_arrow(item.path).schema.names
            except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a corrupt file
                raise DataToolError(f"{item.path}: not a readable arrow file ({type(exc).__name__}: {exc})") from None
            _check_columns(item.path, names, json_key, filter_roots)
            pieces.append(Piece(index, ROWS, "arrow", (item.path,), position, nbytes=item.size, columns=columns))
        elif item.format == "stream":
            pieces.append(Piece(index, STREAM, "stream", (item.path,), position, stream=item.stream))
        else:
            pieces.extend(_line_pieces(item, position, piece_bytes, index))
        position += 1
    return pieces
