"""Packs a folder of videos into array_record shards of JPEG frames.

Usage::

    python -m siammae_jax.data.prepare --videos DIR --out DIR \\
        [--short_side 256] [--workers N] [--shard_size 64] [--quality 90] \\
        [--annotations LIST.csv [--match PATTERN] [--min_frames 2]]

Every video under ``--videos`` (video files, or frame folders with
``--format frames``) is decoded once, sequentially; each frame is resized so
its short side is ``--short_side`` (Pillow, Lanczos) and JPEG-encoded. One
video becomes one record (:func:`siammae_jax.data.video.encode_record`: a
msgpack map of metadata and the list of JPEG frames); records go into shards
``videos-00000-of-00012.array_record`` of ``--shard_size`` consecutive videos
(inputs sorted by path, so the assignment is deterministic). Read them back
with :class:`siammae_jax.data.sources.ArrayRecordSource`.

Videos are packed in parallel worker processes; the main process writes each
shard to ``<shard>.tmp`` and renames it when complete, then records it in
``manifest.json`` (written atomically too; per shard, the ``videos``
packed with their ``num_frames`` and ``streams``: the index of the video
stream read in each file, FFmpeg's best and never cover art, also stored in
each record as ``stream``). Re-running skips the shards the
manifest lists as complete, so a crashed run resumes where it stopped. Bad
videos, and files that are not videos, are skipped; their paths and reasons go
to the manifest (``skipped``; the latter also under ``not_videos``) and the
final report.

With ``--annotations``, a dataset's annotation list (the Kinetics CSV form),
``OUT/coverage.json`` says per split and class how many listed clips are
present, unreadable, too short or missing, and which files no row names
(:mod:`siammae_jax.data.coverage`); one summary line is printed. The list is
read before packing, so a bad one fails at once.

The ``video_folder`` TFDS builder (:mod:`siammae_jax.data.tfds.video_folder`)
stores the same frames (:func:`siammae_jax.data.encode.encode_video`) as a named TFDS dataset,
prepared by Apache Beam on any number of workers; both stay (BENCHMARKS.md,
issue 18: on one host this packing is read 8-13% faster and written about twice
as fast as the builder's on the DirectRunner).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath
from tqdm import tqdm

from siammae_jax.data import coverage, sources
from siammae_jax.data import spec as data_spec
from siammae_jax.data.encode import encode_video
from siammae_jax.data.video import RECORD_FORMAT, BadVideoError, encode_record

MANIFEST = "manifest.json"
SHARD_PATTERN = "videos-{index:05d}-of-{count:05d}.array_record"
TMP_SUFFIX = ".tmp"
# One record per chunk (cheap random access); JPEGs do not compress further.
WRITER_OPTIONS = "group_size:1,uncompressed"


# --------------------------------------------------------------------------
# One video -> one record (runs in the worker processes)


def pack_video(
    path: str, kind: str, name: str, short_side: int | None, quality: int
) -> tuple[bytes | None, str | None]:
    """One video as one record (see :func:`~siammae_jax.data.encode.encode_video`).

    Args:
      path, kind, short_side, quality: see ``encode_video``.
      name: the ``source`` stored in the record (path relative to the inputs).

    Returns:
      ``(record, None)``, or ``(None, reason)`` for a video that cannot be used.
    """
    try:
        jpegs, meta = encode_video(path, kind, short_side, quality)
    except BadVideoError as e:
        return None, e.reason
    return encode_record(jpegs, {"source": name, **meta}), None


def _pack_star(args: tuple) -> tuple[bytes | None, str | None]:
    return pack_video(*args)


# --------------------------------------------------------------------------
# Manifest


def _load_manifest(out: epath.Path, config: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a previous run with the same config, or a fresh one.

    Raises:
      ValueError: ``out`` was packed with different settings or inputs.
    """
    path = out / MANIFEST
    if not path.exists():
        return {"format": RECORD_FORMAT, "config": config, "shards": {}}
    manifest = json.loads(path.read_text())
    if manifest.get("config") != config:
        raise ValueError(
            f"{out} holds shards packed with other settings or inputs "
            f"({manifest.get('config')} != {config}); use a fresh --out folder"
        )
    return manifest


def _save_manifest(out: epath.Path, manifest: dict[str, Any]) -> None:
    """Writes the manifest atomically (temp file, then rename)."""
    manifest["shards"] = dict(sorted(manifest["shards"].items()))
    shards = manifest["shards"].values()
    manifest["packed"] = sum(s["packed"] for s in shards)
    # Every file not packed: those that are not videos, then the bad videos.
    manifest["skipped"] = manifest.get("not_videos", []) + [
        v for s in shards for v in s["skipped"]
    ]
    manifest["complete"] = len(manifest["shards"]) == manifest["config"]["num_shards"]
    tmp = out / (MANIFEST + TMP_SUFFIX)
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    tmp.replace(out / MANIFEST)


# --------------------------------------------------------------------------
# Shards


def _imap(
    fn: Callable, tasks: list[tuple], workers: int
) -> Iterator[tuple[bytes | None, str | None]]:
    """``map(fn, tasks)`` in order, over ``workers`` processes if > 1.

    At most ``2 * workers`` tasks are in flight, so finished records waiting
    for a slow one stay few.
    """
    if workers <= 1:
        yield from map(fn, tasks)
        return
    context = multiprocessing.get_context("spawn")  # Safe with threads (JAX).
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append(pool.submit(fn, task))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write_shards(
    out: epath.Path,
    shards: list[tuple[str, list[tuple]]],
    manifest: dict[str, Any],
    workers: int,
    progress: bool,
) -> None:
    """Packs and writes ``shards`` (name, pack_video args), updating the manifest."""
    tasks = [task for _, shard_tasks in shards for task in shard_tasks]
    results = _imap(_pack_star, tasks, workers)
    bar = tqdm(total=len(tasks), unit="video", desc="packing", disable=not progress)
    skipped_count = 0
    for name, shard_tasks in shards:
        tmp = out / (name + TMP_SUFFIX)
        writer = ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
        entry = {"packed": 0, "videos": [], "num_frames": [], "streams": []}
        entry["skipped"] = []
        for task in shard_tasks:
            record, reason = next(results)
            if record is None:
                entry["skipped"].append({"path": task[2], "reason": reason})
                skipped_count += 1
                bar.set_postfix(skipped=skipped_count)
            else:
                writer.write(record)
                entry["packed"] += 1
                entry["videos"].append(task[2])
                meta = msgpack.unpackb(record)
                entry["num_frames"].append(meta["num_frames"])
                entry["streams"].append(meta.get("stream"))  # frame folders: None
            bar.update()
        writer.close()
        tmp.replace(out / name)
        manifest["shards"][name] = entry
        _save_manifest(out, manifest)
    bar.close()


def _inputs(
    videos_dir: str | epath.Path, format: str | None
) -> tuple[str, list, list[dict[str, str]]]:
    """The input kind, the sorted ``(path, name)`` of every input video, and
    ``{"path", "reason"}`` of every other file under ``videos_dir``."""
    source = data_spec.open(
        data_spec.DataSpec(path=str(videos_dir), format=format or "")
    )
    kind = {sources.VideoFolderSource: "video", sources.FrameFolderSource: "frames"}
    if type(source) not in kind:
        raise ValueError(f"{videos_dir}: expected video files or frame folders")
    root = str(epath.Path(videos_dir)).rstrip("/") + "/"

    def name(path: str) -> str:
        return path[len(root) :] if path.startswith(root) else path

    names = [name(p) for p in source.paths]
    others = [{"path": name(p), "reason": r} for p, r in source.skipped]
    return kind[type(source)], list(zip(source.paths, names, strict=True)), others


def _plan(
    out: epath.Path,
    names: list[str],
    manifest: dict[str, Any],
    inputs: list[tuple[str, str]],
    settings: tuple[str, int | None, int],
) -> tuple[set[str], list[tuple[str, list[tuple]]]]:
    """(shards the manifest lists as complete, the others with their
    ``pack_video`` tasks); drops leftover temporary files and stale entries."""
    for stale in out.glob("*" + TMP_SUFFIX):
        stale.unlink()
    done = {n for n in names if n in manifest["shards"] and (out / n).exists()}
    manifest["shards"] = {n: e for n, e in manifest["shards"].items() if n in done}
    size = manifest["config"]["shard_size"]
    kind, short_side, quality = settings
    todo = []
    for i, name in enumerate(names):
        if name not in done:
            chunk = inputs[i * size : (i + 1) * size]
            todo.append((name, [(p, kind, n, short_side, quality) for p, n in chunk]))
    return done, todo


def prepare(
    videos_dir: str | epath.Path,
    out_dir: str | epath.Path,
    short_side: int | None = 256,
    workers: int = 1,
    shard_size: int = 64,
    quality: int = 90,
    format: str | None = None,
    progress: bool = True,
    annotations: str | epath.Path | None = None,
    match: str = coverage.DEFAULT_MATCH,
    min_frames: int = coverage.MIN_FRAMES,
) -> dict[str, Any]:
    """Packs every video under ``videos_dir`` into shards under ``out_dir``.

    Resumable: shards the manifest lists as complete (and whose file exists)
    are kept; the others, and leftover ``*.tmp`` files, are redone.

    Args:
      videos_dir: the input folder.
      out_dir: the output folder (created if missing).
      short_side: short side of the stored frames (None or 0: keep the size).
      workers: packing processes (1: pack in this process).
      shard_size: videos per shard.
      quality: JPEG quality (1-95).
      format: ``"video"`` or ``"frames"``; inferred from the files if None.
      progress: show a progress bar and print the summary.
      annotations: an annotation list: write ``out_dir/coverage.json``
        (:mod:`siammae_jax.data.coverage`).
      match, min_frames: how rows name files, and the fewest frames of a
        usable video (see :func:`siammae_jax.data.coverage.tally`).

    Returns:
      A summary: ``packed`` and ``num_skipped`` (counts), ``skipped`` (list of
      ``{"path", "reason"}``), ``shards`` (all shard names), ``written`` and
      ``reused`` (shards packed by this run / kept from an earlier one),
      ``out_dir`` and, with ``annotations``, ``coverage`` (the report).

    Raises:
      FileNotFoundError, ValueError: no inputs, or ``out_dir`` was packed with
        other settings or inputs.
      coverage.AnnotationError: a bad annotation list (before packing).
    """
    rows = coverage.read_annotations(annotations, match) if annotations else None
    kind, inputs, others = _inputs(videos_dir, format)
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_shards = -(-len(inputs) // shard_size)
    names = [SHARD_PATTERN.format(index=i, count=num_shards) for i in range(num_shards)]
    digest = hashlib.sha1("\n".join(n for _, n in inputs).encode()).hexdigest()
    config = dict(
        kind=kind, short_side=short_side or None, quality=quality,
        shard_size=shard_size, num_shards=num_shards, inputs_sha1=digest,
    )  # fmt: skip
    manifest = _load_manifest(out, config)
    manifest["not_videos"] = others
    done, todo = _plan(out, names, manifest, inputs, (kind, short_side, quality))
    _write_shards(out, todo, manifest, workers, progress)
    _save_manifest(out, manifest)
    summary = {
        "packed": manifest["packed"],
        "num_skipped": len(manifest["skipped"]),
        "skipped": manifest["skipped"],
        "shards": names,
        "written": [name for name, _ in todo],
        "reused": sorted(done),
        "out_dir": str(out),
    }
    if annotations:
        outcomes = coverage.prepared_outcomes(manifest, out)
        summary["coverage"] = coverage.report(
            annotations, outcomes, match=match, min_frames=min_frames, rows=rows
        )
        coverage.write(out, summary["coverage"])
    if progress:
        print(format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable end-of-run report of :func:`prepare`."""
    lines = [
        f"packed {summary['packed']} videos into {len(summary['shards'])} shards "
        f"under {summary['out_dir']} ({len(summary['written'])} written now, "
        f"{len(summary['reused'])} kept); skipped {summary['num_skipped']}"
        + (":" if summary["skipped"] else ".")
    ]
    lines += [f"  {s['path']}: {s['reason']}" for s in summary["skipped"]]
    if "coverage" in summary:
        path = epath.Path(summary["out_dir"]) / coverage.COVERAGE
        lines.append(coverage.summary_line(summary["coverage"], path))
    return "\n".join(lines)


def _parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m siammae_jax.data.prepare",
        description="Pack videos into array_record shards of JPEG frames.",
    )
    parser.add_argument("--videos", required=True, help="input folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--short_side", type=int, default=256, help="0: keep size")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes"
    )
    parser.add_argument("--shard_size", type=int, default=64, help="videos/shard")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument(
        "--format", choices=("video", "frames"), default=None, help="input kind"
    )
    parser.add_argument(
        "--annotations", help="annotation list (CSV: label,youtube_id,time_start,"
        "time_end,split): write OUT/coverage.json",
    )  # fmt: skip
    parser.add_argument(
        "--match", default=coverage.DEFAULT_MATCH,
        help="the file name (no suffix) a row names, as a format string over "
        "its columns (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--min_frames", type=int, default=coverage.MIN_FRAMES,
        help="fewer frames than this: too short (default: %(default)s)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> None:
    """Command-line entry point."""
    args = _parse_args(argv)
    if args.min_frames < 1:
        raise SystemExit(f"prepare: --min_frames {args.min_frames} must be >= 1")
    try:
        prepare(
            args.videos,
            args.out,
            short_side=args.short_side,
            workers=args.workers,
            shard_size=args.shard_size,
            quality=args.quality,
            format=args.format,
            annotations=args.annotations,
            match=args.match,
            min_frames=args.min_frames,
        )
    except coverage.AnnotationError as e:
        raise SystemExit(f"prepare: {e}") from None


if __name__ == "__main__":
    main()
