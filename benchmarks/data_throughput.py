"""Decoded, augmented frame pairs per second from video containers, frame folders
and array_record, and the cost of the video files' frame index.

Usage: python benchmarks/data_throughput.py [--videos 16] [--frames 60]
    [--seconds 4] [--workdir DIR] [--kinds avi_mpeg4,mkv_h264,...] [--kinds_only]

Renders ``--videos`` synthetic videos (``siammae_jax.data.synthetic``) at 256p
(256x448) and writes them as H.264 mp4 at two GOP lengths (30 and the
synthetic default 12), as frame folders (JPEG quality 95), as array_record
(``prepare(..., short_side=256)`` of the GOP-30 mp4s, JPEG quality 90), as
the ``video_folder`` TFDS dataset of the same mp4s (same frames; Beam
DirectRunner) and in the other containers of ``--kinds`` (:data:`KINDS`, GOP
30). Both packings are timed with ``--prep_workers`` processes (videos/s). Then, for each
source, with ``PairSampler(size=224, repeats=2)``:

* ``map``: the per-video map alone in this process (``sampler(source[i], rng)``,
  including opening the video): pairs/s on one core. For video files the frame
  index is built anew for every video (the cache is emptied first), as in the
  first epoch over a data set larger than the cache; ``index_ms`` is the time
  to build one index (demuxing, no decoding) and ``restarts`` the reads that
  decoded from the start of the file;
* ``pipe(w)``: the full grain pipeline (``make_pipeline``, batches of 32 pairs)
  with ``num_workers=w`` for w in ``--workers``: pairs/s after a warm-up. The
  pipeline sees ``--records`` records that cycle over the videos (:class:`Tiled`):
  grain's global shuffle costs ~6 ms per record on a 4-record data set and
  ~2 ms on 16, but ~0.03 ms from 1000 records on, so a literal 16-video data
  set would charge the pipeline a cost that real data sets do not have.

``--kinds_only`` writes and measures only the containers of ``--kinds`` (no
mp4s, frame folders or packings), e.g. ``--kinds m1v_mpeg1 --kinds_only
--frames 300 --warm`` for random access into a raw MPEG-1 elementary stream;
``--warm`` also measures ``map`` with the frame indexes and what seeking
learnt kept between draws (rows ``NAME (warm)``), as in a training process
after its first draws.

Prints a JSON result and a markdown table. Pipeline figures are totals, not per
core: with 2 workers on a 2-core machine they compete with the main process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from absl import flags
from PIL import Image

from siammae_jax.data import pairs, pipeline, prepare, sources, synthetic, video_file
from siammae_jax.data import video as video_lib

FPS = synthetic.FPS
CRF = 15  # as synthetic.write_dataset; only the GOP differs between the mp4s
JPEG_QUALITY = synthetic.JPEG_QUALITY
TARGETS = {"array_record": 100.0, "mp4": 25.0}  # pairs/s/core, from issue 4
TARGETS["tfds"] = TARGETS["array_record"]  # issue 18: as fast as prepare's
# Other containers: name -> (suffix, codec, container format, encoder options).
KINDS = {
    "avi_mpeg4": (".avi", "mpeg4", None, {"qscale": "3"}),
    "mkv_h264": (".mkv", "libx264", None, {"crf": str(CRF)}),
    "webm_vp9": (".webm", "libvpx-vp9", None, {"crf": "32", "b": "0",
                                                "deadline": "realtime",
                                                "cpu-used": "8"}),
    "mpg_mpeg2": (".mpg", "mpeg2video", "mpeg", {"qscale": "3"}),
    "ts_mpeg2": (".ts", "mpeg2video", "mpegts", {"qscale": "3"}),
    # Raw elementary streams: no container, no index to seek by time (and
    # H.264's has no timestamps at all).
    "m1v_mpeg1": (".m1v", "mpeg1video", "mpeg1video", {"qscale": "3"}),
    "h264_raw": (".h264", "libx264", "h264", {"crf": str(CRF)}),
}  # fmt: skip
KIND_GOP = 30


def write_mp4(path: Path, frames: np.ndarray, gop: int) -> None:
    """H.264 (libx264), yuv420p, ``FPS`` fps, crf ``CRF``, a keyframe every ``gop``."""
    video_lib.write_mp4(path, frames, fps=FPS, gop=gop, crf=CRF)


def write_kind(path: Path, frames: np.ndarray, kind: str) -> None:
    """``frames`` in the container and codec of ``KINDS[kind]``, GOP ``KIND_GOP``."""
    suffix, codec, format, options = KINDS[kind]
    with av.open(str(path), "w", format=format) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = KIND_GOP
        stream.options = dict(options)
        if codec in ("mpeg4", "mpeg2video", "mpeg1video"):
            stream.codec_context.qscale = int(options["qscale"])
        for frame in frames:
            image = av.VideoFrame.from_ndarray(frame, format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())


def make_data(
    workdir: Path, videos: int, frames: int, size, gops, kinds, only_kinds=False
) -> dict:
    """Writes every source format under ``workdir`` (``only_kinds``: the
    containers of ``kinds`` alone); returns their paths."""
    paths = {f"mp4_gop{g}": workdir / f"mp4_gop{g}" for g in gops}
    paths.update({kind: workdir / kind for kind in kinds})
    paths["frames"] = workdir / "frames"
    if only_kinds:
        gops, paths = [], {kind: paths[kind] for kind in kinds}
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    for index in range(videos):
        video = synthetic.make_video(0, index, frames, size)
        for g in gops:
            write_mp4(paths[f"mp4_gop{g}"] / f"{video.name}.mp4", video.frames, g)
        for kind in kinds:
            file = paths[kind] / f"{video.name}{KINDS[kind][0]}"
            write_kind(file, video.frames, kind)
        if only_kinds:
            continue
        folder = paths["frames"] / video.name
        folder.mkdir(exist_ok=True)
        for t, frame in enumerate(video.frames):
            Image.fromarray(frame).save(
                folder / f"{t:05d}.jpg", format="JPEG", quality=JPEG_QUALITY
            )
    if only_kinds:
        return paths
    paths["array_record"] = workdir / "array_record"
    paths["tfds"] = workdir / "tfds"
    return paths


def prepare_both(paths: dict, gops, workers: int = 2) -> dict:
    """Packs the GOP-30 mp4s both ways, ``workers`` processes each: ``prepare``
    into array_record, and the ``video_folder`` TFDS builder (Beam
    DirectRunner, multi-processing), into TFDS's array_record. Same frames
    (short side 256, JPEG quality 90). Returns the seconds of each."""
    import tensorflow_datasets as tfds
    from apache_beam.options.pipeline_options import PipelineOptions

    import siammae_jax.data.tfds  # noqa: F401 (registers video_folder)

    videos = paths[f"mp4_gop{max(gops)}"]
    start = time.perf_counter()
    prepare.prepare(
        videos, paths["array_record"], short_side=256, workers=workers, progress=False
    )
    prepare_s = time.perf_counter() - start
    options = PipelineOptions(
        runner="DirectRunner",
        direct_num_workers=workers,
        direct_running_mode="multi_processing",
    )
    start = time.perf_counter()
    tfds.builder("video_folder", data_dir=str(paths["tfds"])).download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(videos), beam_options=options
        )
    )
    return {"prepare": prepare_s, "tfds_beam": time.perf_counter() - start}


def _bytes(path: Path) -> int:
    """Total size of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def open_sources(paths: dict) -> dict:
    """The grain source of each data folder written by :func:`make_data`."""
    out = {}
    for name, path in paths.items():
        if name.startswith("mp4") or name in KINDS:
            out[name] = sources.VideoFolderSource(path)
        elif name == "frames":
            out[name] = sources.FrameFolderSource(path)
        elif name == "tfds":
            out[name] = sources.TfdsSource("video_folder", str(path))
        else:
            out[name] = sources.ArrayRecordSource(path)
    return out


class Tiled:
    """``length`` records cycling over ``source``'s videos (a larger data set)."""

    def __init__(self, source, length: int):
        self.source, self.length = source, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.source[index % len(self.source)]

    def __repr__(self) -> str:
        return f"Tiled({self.source!r}, {self.length})"


def map_rate(
    source, sampler: pairs.PairSampler, seconds: float, warm: bool = False
) -> dict:
    """Pairs/s of ``sampler(source[i], rng)`` in this process (one core).

    Video files build their frame index for every video (cold cache), or with
    ``warm`` keep the indexes and what seeking learnt per file (files whose
    seeks failed are read from the start), as one training process does.
    """
    sampler(source[0], np.random.default_rng(0))  # warm-up (imports, caches)
    count, k, decoded, restarts = 0, 0, 0, 0
    cpu, start = time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds or k < len(source):
        if not warm:
            video_file._INDEX_CACHE.clear()  # (and what seeking learnt per file)
            video_file._UNRELIABLE_SEEKS.clear()
            video_file._SEEK_BY_DTS.clear()
        video = source[k % len(source)]
        count += len(sampler(video, np.random.default_rng(k))["frames"])
        decoded += getattr(video, "frames_decoded", 0)  # video files: seek cost
        restarts += getattr(video, "restarts", 0)
        k += 1
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    out = {"pairs_per_s": count / wall, "pairs_per_cpu_s": count / cpu}
    out.update(pairs=count, frames_decoded_per_video=decoded / k)
    if isinstance(source, sources.VideoFolderSource):
        out.update(restarts_per_video=restarts / k, index_ms=index_ms(source))
    return out


def index_ms(source: sources.VideoFolderSource) -> float:
    """Milliseconds to build one video's frame index (mean over the source)."""
    start = time.perf_counter()
    for path in source.paths:
        video_file._INDEX_CACHE.clear()
        video_file.VideoFile(path)
    return 1000 * (time.perf_counter() - start) / len(source)


def pipeline_rate(
    source, sampler: pairs.PairSampler, seconds: float, workers: int, batch: int
) -> dict:
    """Pairs/s of the grain pipeline (after filling the prefetch buffers)."""
    it = iter(
        pipeline.make_pipeline(
            source, batch_size=batch, sampler=sampler, seed=0, num_workers=workers
        )
    )  # Endless: every measurement stops long before its end.
    start = time.perf_counter()
    warmup = 1 + 2 * workers  # the first batch, then what the workers buffered
    for _ in range(warmup):
        next(it)
    first = time.perf_counter() - start
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3 * batch:
        count += len(next(it)["frames"])
    wall = time.perf_counter() - start
    del it  # stops the worker processes
    return {"pairs_per_s": count / wall, "pairs": count, "warmup_s": first}


def table(result: dict) -> str:
    """The markdown table of ``result``, one row per source."""
    workers = result["config"]["workers"]
    head = ["source", "stored", "map pairs/s/core (wall)", "map pairs/CPU-s"]
    head += [f"pipeline w={w} pairs/s" for w in workers]
    head += ["index ms/video", "frames decoded/video", "restarts/video"]
    head.append("target pairs/s/core")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in result["sources"].items():
        target = TARGETS.get("mp4" if name.startswith("mp4") else name)
        m = r["map"]
        met = "-"
        if target is not None:
            ok = m["pairs_per_s"] >= target  # wall clock: the conservative figure
            met = f">= {target:g}: " + ("**met**" if ok else "**missed**")
        row = [
            name,
            r["stored"],
            f"{m['pairs_per_s']:.1f}",
            f"{m['pairs_per_cpu_s']:.1f}",
        ]
        row += [
            f"{r[f'pipe_w{w}']['pairs_per_s']:.1f}" if f"pipe_w{w}" in r else "-"
            for w in workers
        ]
        row.append(f"{m['index_ms']:.1f}" if "index_ms" in m else "-")
        row.append(f"{m['frames_decoded_per_video']:.1f}")
        row.append(f"{m['restarts_per_video']:.2f}" if "index_ms" in m else "-")
        row.append(met)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def table_prep(prep: dict, videos: int, workers: int) -> str:
    """Preparation speed of the two packings, one row each."""
    lines = [
        f"| packing ({videos} videos, {workers} processes) | seconds | videos/s |",
        "|---|---:|---:|",
    ]
    names = {
        "prepare": "`prepare --workers` (array_record shards)",
        "tfds_beam": "`video_folder` TFDS builder, Beam DirectRunner",
    }
    for key, seconds in prep.items():
        lines.append(f"| {names[key]} | {seconds:.1f} | {videos / seconds:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--size", default="256x448", help="HxW of the sources")
    p.add_argument("--gops", default="30,12", help="GOP lengths of the mp4s")
    p.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    p.add_argument("--workers", default="0,2", help="pipeline num_workers values")
    p.add_argument("--batch", type=int, default=32, help="pairs per pipeline batch")
    p.add_argument("--records", type=int, default=1024, help="pipeline data set size")
    p.add_argument("--workdir", type=Path, help="data folder (default: a temp dir)")
    p.add_argument(
        "--prep_workers", type=int, default=2, help="processes of both preparations"
    )
    p.add_argument(
        "--kinds", default=",".join(KINDS), help="other containers ('' for none)"
    )
    p.add_argument("--kinds_only", action="store_true", help="measure only the --kinds")
    p.add_argument("--warm", action="store_true", help="also map with warm caches")
    args = p.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    size = tuple(int(s) for s in args.size.split("x"))
    gops = [int(g) for g in args.gops.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown --kinds {sorted(unknown)}; choose from {list(KINDS)}")
    sampler = pairs.PairSampler(size=224, repeats=2)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        start = time.perf_counter()
        paths = make_data(
            workdir, args.videos, args.frames, size, gops, kinds, args.kinds_only
        )
        prep = {}
        if not args.kinds_only:
            prep = prepare_both(paths, gops, args.prep_workers)
            print(table_prep(prep, args.videos, args.prep_workers), flush=True)
        setup_s = time.perf_counter() - start
        result = {
            "config": dict(
                videos=args.videos,
                frames=args.frames,
                size=list(size),
                fps=FPS,
                gops=gops,
                crf=CRF,
                kinds={k: KINDS[k] for k in kinds},
                kind_gop=KIND_GOP,
                seconds=args.seconds,
                batch=args.batch,
                workers=workers,
                records=args.records,
                sampler=repr(sampler),
                setup_s=round(setup_s, 1),
            ),  # fmt: skip
            "machine": {
                "cpus": os.cpu_count(),
                "arch": platform.machine(),
                "python": platform.python_version(),
            },
            "sources": {},
            "preparation_s": {k: round(v, 2) for k, v in prep.items()},
        }
        for name, source in open_sources(paths).items():
            mib = _bytes(paths[name]) / 2**20 / args.videos
            r = {"stored": f"{mib:.2f} MiB/video"}
            r["map"] = map_rate(source, sampler, args.seconds)
            for w in workers if name not in KINDS else ():  # (map only)
                tiled = Tiled(source, max(args.records, len(source)))
                r[f"pipe_w{w}"] = pipeline_rate(
                    tiled, sampler, args.seconds, w, args.batch
                )
            result["sources"][name] = r
            print(name, json.dumps(r), flush=True)
            if args.warm and isinstance(source, sources.VideoFolderSource):
                warm = {"stored": r["stored"]}
                warm["map"] = map_rate(source, sampler, args.seconds, warm=True)
                result["sources"][f"{name} (warm)"] = warm
                print(name, "(warm)", json.dumps(warm), flush=True)
    result["total_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
