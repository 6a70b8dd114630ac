"""How complete a copy of an annotated video dataset is: ``coverage.json``.

An annotation list is a CSV file in the Kinetics form, a header naming at least
the columns ``label,youtube_id,time_start,time_end,split`` (others are
ignored), one clip a row, times in whole seconds::

    label,youtube_id,time_start,time_end,split
    abseiling,0347ZoDXyP0,14,24,train

A row names the file whose name, without its suffix (any suffix:
``.mp4``, ``.webm``, ``.mkv``, ...), is the row formatted by the match
pattern, a Python format string over the five columns, ``time_start`` and
``time_end`` as integers. The default, :data:`DEFAULT_MATCH`,
``{youtube_id}_{time_start:06d}_{time_end:06d}``, is how the Kinetics download
scripts name the clips (``0347ZoDXyP0_000014_000024.mp4``). A pattern without
``/`` matches the file name anywhere under the folder; one with ``/`` matches
the path below the folder (e.g. ``{split}/{label}/{youtube_id}``).

Each row is one of (so ``expected = present + unreadable + too_short +
missing``, in total, per split and per class):

- ``present``: a file matches and it is a usable video, at least
  ``min_frames`` frames (2 by default: one pair at a gap of 1 frame);
- ``unreadable``: a file matches but cannot be used, with the reason the
  packing gave (``cannot open: ...``, ``truncated: ...``, ``not a video ...``);
- ``too_short``: a file matches and decodes, with fewer than ``min_frames``
  frames;
- ``missing``: no file matches.

Files that no row names are listed under ``unlisted``; when several files match
one row (``x.mp4`` and ``x.webm``), the row takes the best (present, then too
short, then unreadable) and the others are listed under ``duplicates``.

The report (:func:`tally`, written by :func:`write`)::

    {"format", "annotations", "annotations_sha256", "match", "min_frames",
     "total": GROUP, "splits": {split: GROUP}, "classes": {label: GROUP},
     "unlisted": [{"file", "status", "reason" | "frames"}],
     "duplicates": [{"file", "line", "used"}]}

with ``GROUP = {"expected", "present", "unreadable", "too_short", "missing",
"files": {"unreadable": [{"file", "line", "reason"}], "too_short": [{"file",
"line", "frames"}], "missing": [{"name", "line"}]}}`` (``line``: the row's line
in the CSV; ``name``: the file name the row wants, without suffix).

``prepare --annotations LIST.csv`` and the ``video_folder`` TFDS builder
(``annotations`` in its config) write it next to what they store; the model
card of weights trained on such data carries :func:`card` of it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import posixpath
import string
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
from array_record.python.array_record_module import ArrayRecordReader
from etils import epath

from siammae_jax import files

COVERAGE = "coverage.json"
# A training workdir's copy of its data's report, taken when the run starts.
SNAPSHOT = "data_coverage.json"
FORMAT = "siammae_jax.coverage/1"
COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
DEFAULT_MATCH = "{youtube_id}_{time_start:06d}_{time_end:06d}"
MIN_FRAMES = 2
STATUSES = ("present", "unreadable", "too_short", "missing")
# What one file under the folder turned out to be: its frame count when it
# decodes, else why it cannot be used.
Outcome = int | str


class AnnotationError(ValueError):
    """A bad annotation list or match pattern (the message names the line)."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One clip of an annotation list.

    Attributes:
      line: its line in the CSV file (the header is line 1).
      label, youtube_id, time_start, time_end, split: its columns.
      name: the file name it wants (without suffix), from the match pattern.
    """

    line: int
    label: str
    youtube_id: str
    time_start: int
    time_end: int
    split: str
    name: str


# --------------------------------------------------------------------------
# The annotation list


def check_match(match: str) -> None:
    """Checks a match pattern's fields.

    Raises:
      AnnotationError: a field other than :data:`COLUMNS`, or bad syntax.
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(match) if f is not None]
    except ValueError as e:
        raise AnnotationError(f"match pattern {match!r}: {e}") from e
    if not fields:
        raise AnnotationError(
            f"match pattern {match!r} names no column; use fields of "
            f"{', '.join(COLUMNS)}, e.g. {DEFAULT_MATCH!r}"
        )
    unknown = [f for f in fields if f not in COLUMNS]
    if unknown:
        raise AnnotationError(
            f"match pattern {match!r}: unknown field {unknown[0]!r}; the fields "
            f"are {', '.join(COLUMNS)}"
        )


def read_annotations(path: str | epath.Path, match: str = DEFAULT_MATCH) -> list[Row]:
    """The rows of an annotation list (see the module docstring).

    Raises:
      AnnotationError: no header or a header without the columns, a row with
        another number of fields, an empty field, a time that is not a whole
        number of seconds >= 0, ``time_end <= time_start``, a pattern that
        cannot format a row, two rows naming the same file, or no rows; the
        message names ``path:line``.
    """
    check_match(match)
    try:
        text = epath.Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e})") from e
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    absent = [c for c in COLUMNS if c not in header]
    if absent:
        raise AnnotationError(
            f"{path}:1: the header {','.join(header)!r} lacks the column(s) "
            f"{', '.join(absent)}; expected {','.join(COLUMNS)}"
        )
    if len(set(header)) != len(header):
        raise AnnotationError(f"{path}:1: a column is named twice in the header")
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for values in reader:
        if not any(v.strip() for v in values):
            continue  # A blank line.
        row = _row(values, header, match, path, reader.line_num)
        if row.name in seen:
            raise AnnotationError(
                f"{path}:{row.line}: names the same file as line "
                f"{seen[row.name]} ({row.name!r} with the pattern {match!r})"
            )
        seen[row.name] = row.line
        rows.append(row)
    if not rows:
        raise AnnotationError(f"{path}: no rows under the header")
    return rows


def _row(values: list[str], header: list[str], match: str, path, line: int) -> Row:
    """One CSV record (ending on ``line`` of ``path``) as a :class:`Row`."""
    where = f"{path}:{line}"
    if len(values) != len(header):
        raise AnnotationError(
            f"{where}: {len(values)} fields, the header has {len(header)}"
        )
    fields = {h: v.strip() for h, v in zip(header, values, strict=True)}
    for column in COLUMNS:
        if not fields[column]:
            raise AnnotationError(f"{where}: empty {column}")
    start = _seconds(fields["time_start"], "time_start", where)
    end = _seconds(fields["time_end"], "time_end", where)
    if end <= start:
        raise AnnotationError(
            f"{where}: time_end {end} is not after time_start {start}"
        )
    columns = {c: fields[c] for c in COLUMNS} | {"time_start": start, "time_end": end}
    try:
        name = match.format(**columns)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise AnnotationError(f"{where}: the match pattern {match!r}: {e}") from e
    return Row(line=line, name=name, **columns)


def _seconds(text: str, column: str, where: str) -> int:
    """A time column as whole seconds (``14``, ``14.0``)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value.is_integer()):
        raise AnnotationError(
            f"{where}: {column} {text!r} is not a whole number of seconds >= 0"
        )
    return int(value)


# --------------------------------------------------------------------------
# Counting


def _key(name: str, nested: bool) -> str:
    """What a file is matched by: its path (``nested``) or name, no suffix."""
    if not nested:
        name = posixpath.basename(name)
    root, suffix = posixpath.splitext(name)
    return root if suffix else name


def _status(outcome: Outcome, min_frames: int) -> str:
    if isinstance(outcome, str):
        return "unreadable"
    return "present" if outcome >= min_frames else "too_short"


def _entry(file: str, outcome: Outcome, status: str) -> dict[str, Any]:
    """A listed file: its name plus its reason or frame count."""
    if status == "unreadable":
        return {"file": file, "reason": outcome}
    return {"file": file, "frames": outcome}


def _group() -> dict[str, Any]:
    counts: dict[str, Any] = {"expected": 0, **dict.fromkeys(STATUSES, 0)}
    return counts | {"files": {s: [] for s in STATUSES[1:]}}


def tally(
    rows: Iterable[Row],
    outcomes: Mapping[str, Outcome],
    *,
    match: str = DEFAULT_MATCH,
    min_frames: int = MIN_FRAMES,
) -> dict[str, Any]:
    """The coverage report of ``rows`` over the files of ``outcomes``.

    Args:
      rows: the annotation list (:func:`read_annotations` with ``match``).
      outcomes: every file under the folder (path relative to it, with
        ``/``) -> its frame count, or why it cannot be used.
      match: the pattern the rows were read with (``/`` in it: match paths).
      min_frames: fewer frames than this is ``too_short``.

    Returns:
      The report without ``annotations`` (see the module docstring).
    """
    if min_frames < 1:
        raise ValueError(f"min_frames={min_frames} must be >= 1")
    nested = "/" in match
    by_key: dict[str, list[str]] = {}
    for file in sorted(outcomes):
        by_key.setdefault(_key(file, nested), []).append(file)
    rank = {"present": 0, "too_short": 1, "unreadable": 2}
    total, splits, classes = _group(), {}, {}
    used, duplicates = set(), []
    for row in rows:
        files = sorted(
            by_key.get(row.name, []),
            key=lambda f: rank[_status(outcomes[f], min_frames)],
        )
        used.update(files)
        duplicates += [
            {"file": f, "line": row.line, "used": files[0]} for f in files[1:]
        ]
        if not files:
            status, entry = "missing", {"name": row.name}
        else:
            status = _status(outcomes[files[0]], min_frames)
            entry = _entry(files[0], outcomes[files[0]], status)
        for group in (
            total,
            splits.setdefault(row.split, _group()),
            classes.setdefault(row.label, _group()),
        ):
            group["expected"] += 1
            group[status] += 1
            if status != "present":
                group["files"][status].append({**entry, "line": row.line})
    unlisted = []
    for file in sorted(set(outcomes) - used):
        status = _status(outcomes[file], min_frames)
        unlisted.append({**_entry(file, outcomes[file], status), "status": status})
    return {
        "format": FORMAT,
        "match": match,
        "min_frames": min_frames,
        "total": total,
        "splits": dict(sorted(splits.items())),
        "classes": dict(sorted(classes.items())),
        "unlisted": unlisted,
        "duplicates": duplicates,
    }


def report(
    annotations: str | epath.Path,
    outcomes: Mapping[str, Outcome],
    *,
    match: str = DEFAULT_MATCH,
    min_frames: int = MIN_FRAMES,
    rows: list[Row] | None = None,
) -> dict[str, Any]:
    """:func:`tally` of an annotation file, naming it and its sha256.

    ``rows``: the file's rows when already read (else read here).
    """
    rows = rows if rows is not None else read_annotations(annotations, match)
    result = tally(rows, outcomes, match=match, min_frames=min_frames)
    path = epath.Path(annotations)
    return {
        "format": result.pop("format"),
        "annotations": str(path),
        "annotations_sha256": files.sha256(path),
        **result,
    }


# --------------------------------------------------------------------------
# Where the outcomes come from


def prepared_outcomes(
    manifest: Mapping[str, Any], out: epath.Path
) -> dict[str, Outcome]:
    """Every input file of a ``prepare`` run and what it became.

    Args:
      manifest: the run's ``manifest.json`` (:mod:`siammae_jax.data.prepare`).
      out: its folder (shards whose manifest entry predates the frame counts
        are read for them).
    """
    outcomes: dict[str, Outcome] = {
        s["path"]: s["reason"] for s in manifest.get("not_videos", [])
    }
    for name, shard in manifest["shards"].items():
        counts = shard.get("num_frames")
        if counts is None:
            counts = shard_frame_counts(out / name)
        outcomes.update(zip(shard["videos"], counts, strict=True))
        outcomes.update((s["path"], s["reason"]) for s in shard["skipped"])
    return outcomes


def shard_frame_counts(path: epath.Path) -> list[int]:
    """``num_frames`` of every record of a ``prepare`` shard, in order."""
    reader = ArrayRecordReader(str(path))
    try:
        return [msgpack.unpackb(r)["num_frames"] for r in reader.read_all()]
    finally:
        reader.close()


# --------------------------------------------------------------------------
# Writing, the summary line, the model card


def write(folder: str | epath.Path, result: Mapping[str, Any]) -> epath.Path:
    """Writes ``folder/coverage.json`` atomically; returns its path."""
    path = epath.Path(folder) / COVERAGE
    tmp = path.parent / (COVERAGE + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    return path


def summary_line(result: Mapping[str, Any], path: str | epath.Path) -> str:
    """``coverage: 650 expected, 612 present, 3 unreadable, 1 too short, 34
    missing (94.2%); 2 unlisted -> PATH``."""
    t = result["total"]
    share = 100 * t["present"] / t["expected"]
    return (
        f"coverage: {t['expected']} expected, {t['present']} present, "
        f"{t['unreadable']} unreadable, {t['too_short']} too short, "
        f"{t['missing']} missing ({share:.1f}%); "
        f"{len(result['unlisted'])} unlisted -> {path}"
    )


def card(path: str | epath.Path) -> dict[str, Any]:
    """What a model card says of a ``coverage.json``: its path and sha256,
    the annotation list, and the total counts."""
    path = epath.Path(path)
    result = json.loads(path.read_text())
    counts = {k: result["total"][k] for k in ("expected", *STATUSES)}
    return {
        "path": str(path),
        "sha256": files.sha256(path),
        "annotations": result["annotations"],
        "annotations_sha256": result["annotations_sha256"],
        **counts,
        "unlisted": len(result["unlisted"]),
    }
