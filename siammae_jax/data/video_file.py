"""Video container files (mp4, avi, mpg, webm, mkv, ...) read with PyAV.

Frame ``i`` of a file is the ``i``-th frame that decoding it from the start
gives. :class:`FrameIndex` finds every frame's timestamp and the keyframes by
demuxing the packets once (no decoding), measures the frame rate, and spots
truncated or damaged files; :class:`VideoFile` uses it to seek to the
keyframe before each wanted frame and recognise frames by timestamp (raw
elementary streams, which have no timestamps to seek by, by the keyframe's
byte offset and each frame's), falling back to decoding from the start for
containers whose seeks do not land where the index says (counted in
``VideoFile.restarts``). :func:`probe_video` tells
videos from other files, :func:`find_videos` the videos under a folder.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np
from absl import logging
from etils import epath

from siammae_jax.data.video import (
    BadVideoError,
    Video,
    _is_local,
    _reason,
    _stack,
)

# Suffixes taken for videos without probing; other files are probed
# (:func:`probe_video`).
VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".qt", ".avi", ".mkv", ".webm", ".mpg", ".mpeg",
    ".m1v", ".m2v", ".mpv", ".vob", ".ts", ".m2ts", ".mts", ".3gp", ".3g2",
    ".ogv", ".ogg", ".flv", ".f4v", ".wmv", ".asf", ".divx", ".dv", ".mxf",
    ".nut", ".y4m", ".rm", ".rmvb", ".h264", ".264", ".hevc", ".265", ".ivf",
)  # fmt: skip
# Suffixes of files that are certainly not videos (not probed).
NOT_VIDEO_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".txt",
    ".json", ".jsonl", ".csv", ".tsv", ".md", ".html", ".xml", ".yaml", ".yml",
    ".py", ".npy", ".npz", ".pkl", ".zip", ".tar", ".gz", ".pdf", ".srt",
    ".vtt", ".wav", ".mp3", ".flac", ".aac", ".m4a", ".array_record", ".tmp",
)  # fmt: skip
# FFmpeg formats that read single images, not videos.
_IMAGE_FORMATS = ("image2", "image2pipe", "apng", "gif", "webp", "tiff", "ico")


# Container formats whose header counts every frame (mp4/mov: the sample
# table): fewer packets than that count means a truncated file. Other
# headers (AVI's dwLength counts empty chunks too) are not trusted for this.
_EXACT_COUNT_FORMATS = ("mov", "mp4")
# Keyframe-seeks that may land late before a read restarts from the beginning.
_MAX_LATE_SEEKS = 3
# Raw elementary streams (FFmpeg's demuxer names) read from a keyframe's byte
# offset: their demuxers seek by guessing, and timestamps differ after a seek.
_RAW_STREAM_FORMATS = ("mpegvideo", "m4v", "h264")


@dataclasses.dataclass(frozen=True)
class FrameIndex:
    """Where every frame of a video file is, found by demuxing (no decoding).

    Frame ``i`` of a video is the ``i``-th frame that sequential decoding
    outputs: with one frame per packet, the packet with the ``i``-th smallest
    presentation timestamp. Packets that carry no picture (empty, or flagged
    discard by an edit list) are not frames. MPEG-4 part 2 with B-frames
    packed as DivX and XviD pack them (an anchor and a B-frame in one packet,
    then a placeholder packet: :func:`_packed_bframes`) is the exception: the
    decoder stamps the B-frame with the placeholder's timestamp, so the
    timestamps come out of order; for those files the index holds the
    timestamps that decoding the file once gives, in output order.

    The video stream is the one FFmpeg picks as best
    (``av_find_best_stream``), never an attached picture (cover art).

    Attributes:
      pts: int64 ``[num_frames]``, frame ``i``'s presentation timestamp
        (stream time base), ascending but for packed B-frames; empty when
        ``seekable`` is False.
      keyframes: int64 ascending presentation timestamps of the keyframe
        packets; only the first where the palette changes during the video
        (``pal8``, e.g. MS-RLE in AVI): a seek skips the change, which the
        container stores before the frame's packet, so those files are read
        from their first frame.
      keyframe_dts: int64 their decoding timestamps (what some demuxers, such
        as MPEG-TS, seek by; the presentation timestamp where a packet has
        none).
      time_base: the stream's time base, as ``"num/den"``.
      num_frames: frames in the video.
      fps: the measured frame rate: ``(num_frames - 1)`` over the time between
        the first and last timestamps (the mean rate for variable frame
        rates), else the header's rate.
      seekable: every frame has a distinct timestamp, so a seek can be checked
        frame by frame; otherwise reads decode from the start.
      header_frames: the frame count in the container header (0: none).
      format: the container format's name (FFmpeg's).
      stream: the index of the video stream read (among all the file's
        streams).
      packed: the stream holds packed B-frames (timestamps from decoding).
      pos: int64 ``[num_frames]``, the byte offset of frame ``i``'s packet in
        a raw elementary stream (:data:`_RAW_STREAM_FORMATS`), read from its
        keyframe's offset; empty for other files.
      keyframe_pos: int64 ascending, the byte offsets of the keyframe packets
        of a raw elementary stream (empty with ``pos``).
    """

    pts: np.ndarray
    keyframes: np.ndarray
    keyframe_dts: np.ndarray
    time_base: str
    num_frames: int
    fps: float
    seekable: bool
    header_frames: int
    format: str
    stream: int
    packed: bool
    pos: np.ndarray
    keyframe_pos: np.ndarray

    @classmethod
    def build(
        cls,
        path: str,
        container: av.container.InputContainer,
        reopen: Callable[[], contextlib.AbstractContextManager],
    ) -> FrameIndex:
        """Demuxes every packet of the best video stream once.

        Packed B-frames (MPEG-4 part 2) are decoded once as well, for the
        timestamps the decoder gives, and so are raw elementary streams without
        timestamps (H.264), for the order of the frames (:func:`_byte_offsets`):
        ``reopen()`` opens the file again for that.

        Raises:
          BadVideoError: no video stream, no frames, fewer frames than an exact
            header count (a truncated file), or no frame rate.
        """
        stream = best_stream(path, container)
        packets = _Packets.demux(container, stream)
        packed = packets.packed
        pts = _decoded_stamps(reopen, stream.index) if packed else packets.pts
        if not pts:
            raise BadVideoError(path, "no frames")
        name = container.format.name
        header = max(int(stream.frames or 0), 0)
        exact = any(n in name.split(",") for n in _EXACT_COUNT_FORMATS)
        if exact and header > len(pts):
            raise BadVideoError(
                path,
                f"truncated: the header lists {header} frames, the file holds "
                f"{len(pts)}",
            )
        known = [p for p in pts if p is not None]
        seekable = len(known) == len(pts) and len(set(known)) == len(known)
        ordered = np.sort(np.asarray(known if seekable else [], np.int64))
        in_frame_order = np.asarray(known, np.int64) if packed else ordered
        time_base = Fraction(stream.time_base)
        fps = _frame_rate(path, stream, ordered, time_base)
        if seekable:
            _check_duration(path, container, stream, ordered, time_base, fps)
        keyframes = sorted(set(packets.keyframes))
        if packets.palette_changes:
            keyframes = keyframes[:1]
        pos = key_pos = np.zeros(0, np.int64)
        if name in _RAW_STREAM_FORMATS and not packed:
            pos, key_pos = _byte_offsets(reopen, stream.index, packets, seekable)
        return cls(
            pts=in_frame_order if seekable else ordered,
            keyframes=np.asarray([k for k, _ in keyframes], np.int64),
            keyframe_dts=np.asarray([d for _, d in keyframes], np.int64),
            time_base=f"{time_base.numerator}/{time_base.denominator}",
            num_frames=len(pts),
            fps=fps,
            seekable=seekable,
            header_frames=header,
            format=name,
            stream=stream.index,
            packed=packed,
            pos=pos,
            keyframe_pos=key_pos,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FRAME_INDEX_VERSION,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            "pts": self.pts.tolist(),
            "keyframes": self.keyframes.tolist(),
            "keyframe_dts": self.keyframe_dts.tolist(),
            "pos": self.pos.tolist(),
            "keyframe_pos": self.keyframe_pos.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FrameIndex:
        if data.get("version") != FRAME_INDEX_VERSION:
            raise ValueError(f"frame index version {data.get('version')!r}")
        fields = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        fields["pts"] = np.asarray(fields["pts"], np.int64)
        for name in ("keyframes", "keyframe_dts", "pos", "keyframe_pos"):
            fields[name] = np.asarray(fields[name], np.int64)
        return cls(**fields)

    @functools.cached_property
    def keyframe_frames(self) -> np.ndarray:
        """int64: the frame number of each keyframe (of ``keyframe_pos`` in a
        raw elementary stream, else of ``keyframes``; -1: not a frame)."""
        if self.pos.size:
            at = {int(p): i for i, p in enumerate(self.pos)}
            return np.asarray([at.get(int(o), -1) for o in self.keyframe_pos])
        position = {int(p): i for i, p in enumerate(self.pts)}
        return np.asarray([position.get(int(k), -1) for k in self.keyframes])

    def keyframe_before(self, index: int) -> int:
        """Which keyframe is the last at or before frame ``index`` (-1: none);
        an index into ``keyframe_pos`` for raw elementary streams, else into
        ``keyframes``."""
        if not self.packed and not self.pos.size:
            at = np.searchsorted(self.keyframes, self.pts[index], side="right")
            return int(at) - 1
        # Packed B-frames: timestamps out of frame order; raw: by byte offset.
        return int(np.searchsorted(self.keyframe_frames, index, side="right")) - 1


def best_stream(path: str, container: av.container.InputContainer) -> av.VideoStream:
    """The video stream FFmpeg picks as best, never an attached picture.

    Raises:
      BadVideoError: the file has no video stream (cover art does not count).
    """
    videos = [
        s
        for s in container.streams.video
        if not s.disposition & av.stream.Disposition.attached_pic
    ]
    if not videos:
        pictures = " (only an attached picture)" if container.streams.video else ""
        raise BadVideoError(path, f"no video stream{pictures}")
    best = container.streams.best("video")
    return best if best in videos else videos[0]


# MPEG-4 part 2 start code of a VOP (one picture).
_VOP_START = b"\x00\x00\x01\xb6"


def _packed_bframes(data: bytes) -> bool:
    """A packet of packed B-frames: a VOP followed by an I- or B-VOP.

    DivX 5 and XviD put an anchor VOP and the B-VOP shown before it into one
    packet, then a small not-coded VOP as a placeholder. FFmpeg's decoder
    decodes such a second VOP (type I or B: the type's low bit, ``0x40`` of
    the byte after the start code, is clear) when the next packet comes,
    with that packet's timestamp.
    """
    first = data.find(_VOP_START)
    second = data.find(_VOP_START, first + 5) if first >= 0 else -1
    return second >= 0 and second + 4 < len(data) and not data[second + 4] & 0x40


def _decoded_stamps(reopen, index: int, by_offset: bool = False) -> list[int | None]:
    """Every frame's timestamp as decoding stream ``index`` of a freshly
    opened file from the start gives it; with ``by_offset``, each packet is
    stamped with its byte offset first, so the frames come out stamped with
    their packets' offsets."""
    stamps: list[int | None] = []
    with reopen() as container:
        for packet in container.demux(container.streams[index]):
            if by_offset and packet.size:
                packet.pts = packet.dts = packet.pos
            stamps.extend(frame.pts for frame in packet.decode())
    return stamps


def _byte_offsets(reopen, index: int, packets: _Packets, seekable: bool):
    """A raw elementary stream's frame offsets and keyframe offsets.

    With distinct timestamps, frame ``i``'s packet is the one with the
    ``i``-th smallest; without (raw H.264), decoding stream ``index`` once
    with packets stamped by their offsets gives the frames' order. Returns
    two empty arrays when offsets are missing or repeat, or when decoding
    gives another count of frames than packets.
    """
    pts, offsets, key_offsets = packets.pts, packets.offsets, packets.key_offsets
    none = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if min(offsets) < 0 or len(set(offsets)) != len(offsets):
        return none
    if seekable:
        order = [o for _, o in sorted(zip(pts, offsets, strict=True))]
    else:
        order = _decoded_stamps(reopen, index, by_offset=True)
        if None in order or sorted(order) != sorted(offsets):
            return none
    frames = set(order)
    keys = [o for o in key_offsets if o in frames]
    return np.asarray(order, np.int64), np.asarray(keys, np.int64)


@dataclasses.dataclass
class _Packets:
    """What one demuxing pass over a video stream finds, in file order.

    Attributes:
      pts: each packet's presentation timestamp (None: none).
      offsets: each packet's byte offset in the file (-1: unknown).
      key_offsets: the keyframe packets' byte offsets.
      keyframes: ``(pts, dts)`` of the keyframe packets with a timestamp.
      packed: an MPEG-4 part 2 packet holds packed B-frames.
      palette_changes: a packet after the first carries a new palette.
    """

    pts: list[int | None]
    offsets: list[int]
    key_offsets: list[int]
    keyframes: list[tuple[int, int]]
    packed: bool
    palette_changes: bool = False

    @classmethod
    def demux(cls, container, stream) -> _Packets:
        """Every packet of ``stream`` that carries a picture."""
        out = cls([], [], [], [], False)
        mpeg4 = stream.codec_context.name == "mpeg4"
        for packet in container.demux(stream):
            if not packet.size or packet.is_discard:
                continue  # The end-of-stream packet, or no picture.
            if out.pts and packet.has_sidedata("palette"):
                out.palette_changes = True
            out.pts.append(packet.pts)
            out.offsets.append(packet.pos)
            if packet.is_keyframe:
                out.key_offsets.append(packet.pos)
            if packet.is_keyframe and packet.pts is not None:
                dts = packet.pts if packet.dts is None else packet.dts
                out.keyframes.append((packet.pts, dts))
            out.packed = out.packed or (mpeg4 and _packed_bframes(bytes(packet)))
        return out


def _frame_rate(path, stream, ordered: np.ndarray, time_base: Fraction) -> float:
    """``(n - 1)`` frames over the time between the first and last of the
    ``n`` ascending timestamps ``ordered``, else the header's rate.

    Raises:
      BadVideoError: neither gives a rate.
    """
    fps = 0.0
    if len(ordered) > 1 and ordered[-1] > ordered[0]:
        span = Fraction(int(ordered[-1] - ordered[0])) * time_base
        fps = float((len(ordered) - 1) / span)
    if not fps > 0:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
    if not fps > 0:
        raise BadVideoError(path, "unknown frame rate")
    return fps


def _check_duration(path, container, stream, pts, time_base, fps) -> None:
    """Refuses a file whose frames cover much less time than its header says.

    The declared duration is the video stream's, else the container's when
    the video is its only stream (with audio, the video may end first).
    Damaged Matroska files demux without error but end early.

    Raises:
      BadVideoError: the frames cover less than 80% of the declared duration.
    """
    if stream.duration:
        declared = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:
        declared = container.duration / av.time_base
    else:
        return
    covered = float((int(pts[-1]) - int(pts[0])) * time_base) + 1 / fps
    if covered < _MIN_COVERED * declared:
        raise BadVideoError(
            path,
            f"truncated or damaged: the frames cover {covered:.2f} s of the "
            f"{declared:.2f} s the header states",
        )


# Frames must cover this share of the declared duration (see _check_duration).
_MIN_COVERED = 0.8
FRAME_INDEX_VERSION = 4
# Frame indexes kept in memory per process: {(path, size, mtime): FrameIndex}.
# An index is ~16 bytes per frame (a 10-s clip: ~5 kB).
_INDEX_CACHE: collections.OrderedDict = collections.OrderedDict()
INDEX_CACHE_SIZE = 4096
# Files whose seeks did not land where their index says (per process): read
# from the start from then on.
_UNRELIABLE_SEEKS: set = set()
# Files whose demuxer seeks by decoding timestamps (per process).
_SEEK_BY_DTS: set = set()


def _file_key(path: str) -> tuple:
    """What identifies a file's content for the index cache: path, size, mtime."""
    if _is_local(epath.Path(path)):
        info = os.stat(path)
        return (path, info.st_size, info.st_mtime_ns)
    return (path, epath.Path(path).stat().length, 0)


def _sidecar(index_dir: str, key: tuple) -> epath.Path:
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:20]
    return epath.Path(index_dir) / f"{digest}.frameindex.json"


class _Tail(io.RawIOBase):
    """A binary file seen from byte ``offset`` on (a file that begins there)."""

    def __init__(self, file, offset: int):
        self._file, self._offset = file, offset
        file.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._file.readinto(buffer)

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos += self._offset
        return self._file.seek(pos, whence) - self._offset

    def tell(self) -> int:
        return self._file.tell() - self._offset


class VideoFile(Video):
    """A video container file (mp4, avi, mpg, webm, mkv, ...) read with PyAV.

    Frame ``i`` is the ``i``-th frame that decoding the file from the start
    outputs (:meth:`iter_frames`) from FFmpeg's best video stream.
    Construction builds the video's :class:`FrameIndex` (demuxing; cached per
    process, and in ``index_dir`` if given), which maps each frame to its
    timestamp. ``read`` seeks to the keyframe at or before the first wanted
    frame, decodes forward and picks frames by timestamp, jumping ahead when
    the next wanted frame lies past a later keyframe. A seek that lands past
    the wanted frame is retried from earlier keyframes, then from the start of
    the file; a file whose frames lack distinct timestamps is always decoded
    from the start. A raw elementary stream is instead opened at the byte
    offset of the keyframe and its frames recognised by their packets'
    offsets. Local files are opened by name, others (``gs://``) through
    ``epath.Path.open``.

    Args:
      path: the file.
      index_dir: a folder for frame-index sidecar files (None: memory only).

    Attributes:
      frames_decoded: frames the last ``read`` decoded.
      restarts: reads of this object that decoded from the start of the file
        (unseekable timestamps, a seek that landed late, a raw stream that
        cannot be decoded from a keyframe's offset): their cost grows with the
        frame number.

    Raises:
      BadVideoError: the file cannot be opened, has no video stream, no frame
        rate or no frames, or is truncated (mp4/mov).
    """

    def __init__(self, path: str | epath.Path, index_dir: str | None = None):
        self.path = str(path)
        self.frames_decoded = 0
        self.restarts = 0
        try:
            self._key = _file_key(self.path)
            self._index = self._load_index(index_dir)
        except BadVideoError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
            raise BadVideoError(self.path, f"cannot open: {_reason(e)}") from e
        self.num_frames = self._index.num_frames
        self.fps = self._index.fps
        self._position = {int(p): i for i, p in enumerate(self._index.pts)}
        self._keyframe_set = set(self._index.keyframes.tolist())
        self._at_byte = {int(p): i for i, p in enumerate(self._index.pos)}

    @property
    def index(self) -> FrameIndex:
        """The video's frame index."""
        return self._index

    def _load_index(self, index_dir: str | None) -> FrameIndex:
        """The frame index from memory, the sidecar file, or by demuxing."""
        key = self._key
        if key in _INDEX_CACHE:
            _INDEX_CACHE.move_to_end(key)
            return _INDEX_CACHE[key]
        sidecar = _sidecar(index_dir, key) if index_dir else None
        index = None
        if sidecar is not None and sidecar.exists():
            try:
                index = FrameIndex.from_json(json.loads(sidecar.read_text()))
            except (ValueError, KeyError, TypeError):
                index = None  # Stale or damaged: rebuilt below.
        if index is None:
            with self._open() as container:
                index = FrameIndex.build(self.path, container, self._open)
            if sidecar is not None:
                sidecar.parent.mkdir(parents=True, exist_ok=True)
                tmp = sidecar.parent / f"{sidecar.name}.{os.getpid()}.tmp"
                tmp.write_text(json.dumps(index.to_json()))
                tmp.replace(sidecar)
        _INDEX_CACHE[key] = index
        while len(_INDEX_CACHE) > INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
        return index

    @contextlib.contextmanager
    def _open(self, offset: int = 0) -> Iterator[av.container.InputContainer]:
        """The open container (local files by name, others as file objects).

        ``offset`` > 0: a raw elementary stream opened at that byte, as if the
        file began there.
        """
        path = epath.Path(self.path)
        if offset:
            file = open(self.path, "rb") if _is_local(path) else path.open("rb")
            tail = _Tail(file, offset)
            with file, av.open(tail, "r", format=self._index.format) as container:
                yield container
        elif _is_local(path):
            with av.open(self.path, "r") as container:
                yield container
        else:
            with path.open("rb") as f, av.open(f, "r") as container:
                yield container

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """See :meth:`Video.read`; decodes only the GOPs holding the frames."""
        wanted = self._check_indices(indices)
        self.frames_decoded = 0  # Decoded by this read (for tests, profiling).
        out: dict[int, np.ndarray] = {}
        pending = sorted(set(wanted))
        try:
            reliable = self._key not in _UNRELIABLE_SEEKS
            if reliable and self._at_byte:
                self._read_from_offsets(pending, out)
            elif reliable and self._index.seekable:
                self._seek_and_decode(pending, out)
            if pending:
                self.restarts += 1
                self._decode_from_start(pending, out)
        except BadVideoError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
            raise BadVideoError(self.path, f"decoding failed: {_reason(e)}") from e
        return _stack(self.path, [out[i] for i in wanted])

    def _frame_number(self, frame: av.VideoFrame, rank: int) -> int | None:
        """Which frame a decoded one is: by timestamp, else by output rank."""
        if not self._index.seekable or frame.pts is None:
            return rank
        return self._position.get(frame.pts)  # None: not a frame of the index.

    def _seek_and_decode(self, pending: list[int], out: dict) -> None:
        """Decodes ``pending`` (sorted; emptied as frames arrive) by seeking.

        Returns with frames still pending when seeks keep landing past them or
        a frame does not come where the index says: the caller then decodes
        from the start, which settles whether the frame exists.
        """
        late = 0
        limit = len(self._index.keyframes)  # Keyframes at or past it land late.
        by_dts = self._key in _SEEK_BY_DTS
        with self._open() as container:
            stream = container.streams[self._index.stream]
            key = self._index.keyframe_before(pending[0])
            while pending and key >= 0:
                result = self._decode_after_seek(
                    container, stream, key, limit, pending, out, by_dts
                )
                if result == "lost":
                    _UNRELIABLE_SEEKS.add(self._key)
                    return
                if result == "late" and not by_dts:
                    # Demuxers that seek by decoding timestamp (MPEG-TS) land
                    # past a keyframe sought by its presentation timestamp.
                    by_dts = True
                    _SEEK_BY_DTS.add(self._key)
                elif result == "late":  # Retry from the keyframe before.
                    late += 1
                    if late > _MAX_LATE_SEEKS:
                        _UNRELIABLE_SEEKS.add(self._key)
                        return
                    limit = min(limit, key)
                    key -= 1
                elif pending:  # "jump"
                    key = self._index.keyframe_before(pending[0])

    def _decode_after_seek(
        self, container, stream, key, limit, pending, out, by_dts
    ) -> str:
        """Seeks to keyframe number ``key`` (or before) and decodes forward.

        The seek goes by the keyframe's presentation timestamp, or by its
        decoding timestamp when ``by_dts``.

        Decoding starts at the first keyframe packet after the seek. Returns
        ``"done"`` when nothing is pending; ``"late"`` when that keyframe comes
        after ``pending[0]``; ``"jump"`` on reaching a keyframe that precedes
        the one before ``pending[0]``, when that one lies past ``key`` and
        before ``limit`` (seek again rather than decode the frames between;
        demuxers that seek by bytes may land before ``key``); ``"lost"`` when
        ``pending[0]`` did not come where the index says (e.g. the MPEG
        program-stream demuxer gives other timestamps after a seek).
        """
        index = self._index
        target = index.keyframe_dts[key] if by_dts else index.keyframes[key]
        container.seek(int(target), backward=True, any_frame=False, stream=stream)
        started = False
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                if not started:
                    if not packet.is_keyframe:
                        continue  # Frames before a keyframe cannot be decoded.
                    number = self._position.get(packet.pts)
                    if packet.pts not in self._keyframe_set:
                        if packet.pts > index.pts[pending[0]]:
                            return "late"
                        return "lost"  # Timestamps differ after this seek.
                    if number > pending[0]:
                        return "late"
                    started = True
                elif packet.is_keyframe:
                    need = index.keyframe_before(pending[0])
                    if key < need < limit and index.keyframes[need] > packet.pts:
                        return "jump"
            elif not started:
                continue
            for frame in packet.decode():
                self.frames_decoded += 1
                if frame.pts is None:
                    return "lost"
                number = self._position.get(frame.pts)
                if number is None or number < pending[0]:
                    continue  # Open-GOP frames before the keyframe.
                if number > pending[0]:
                    return "lost"
                out[number] = frame.to_ndarray(format="rgb24")
                pending.pop(0)
                if not pending:
                    return "done"
        return "lost"

    def _read_from_offsets(self, pending: list[int], out: dict) -> None:
        """Decodes ``pending`` (sorted; emptied as frames arrive) in a raw
        elementary stream from the byte offsets of its keyframes.

        The file is opened at the offset of the keyframe before the first
        pending frame, as if it began there. Each packet is stamped with its
        offset in the whole file, which the decoder hands on to the picture
        decoded from it, so each frame is recognised by its packet's offset.
        Returns with frames still pending (and the file read from the start
        from then on) when a frame does not come where the index says, or the
        stream cannot be opened or decoded from there (its headers, such as
        MPEG-4's VOL, only at the start of the file).
        """
        index = self._index
        while pending:
            key = index.keyframe_before(pending[0])
            offset = int(index.keyframe_pos[key]) if key >= 0 else 0
            try:
                result = self._decode_from_offset(offset, pending, out)
            except (av.error.FFmpegError, ValueError) as e:
                logging.info("%s: reading from byte %d failed (%s); decoding "
                             "from the start", self.path, offset, _reason(e))  # fmt: skip
                result = "lost"
            if result == "lost":
                _UNRELIABLE_SEEKS.add(self._key)
                return

    def _decode_from_offset(self, offset: int, pending: list[int], out: dict) -> str:
        """Decodes from byte ``offset`` on; ``"done"``, ``"jump"`` (the
        keyframe before ``pending[0]`` lies further on) or ``"lost"``."""
        index = self._index
        with self._open(offset) as container:
            stream = container.streams.video[0]  # (raw: the only stream)
            for packet in container.demux(stream):
                if packet.size:
                    if packet.pos < 0:
                        return "lost"
                    packet.pts = packet.dts = offset + packet.pos
                    before = index.keyframe_before(pending[0])
                    ahead = before >= 0 and index.keyframe_pos[before] > packet.pts
                    if packet.is_keyframe and ahead:
                        return "jump"
                for frame in packet.decode():
                    self.frames_decoded += 1
                    number = self._at_byte.get(frame.pts)
                    if number is None or number > pending[0]:
                        return "lost"
                    if number < pending[0]:
                        continue
                    out[number] = frame.to_ndarray(format="rgb24")
                    pending.pop(0)
                    if not pending:
                        return "done"
        return "lost"

    def _decode_from_start(self, pending: list[int], out: dict) -> None:
        """Decodes from the first frame until every pending frame is out.

        Raises:
          BadVideoError: a pending frame is not decoded.
        """
        with self._open() as container:
            stream = container.streams[self._index.stream]
            for rank, frame in enumerate(container.decode(stream)):
                self.frames_decoded += 1
                index = self._frame_number(frame, rank)
                if index is None or index < pending[0]:
                    continue
                if index > pending[0]:
                    raise BadVideoError(
                        self.path, f"no frame has the timestamp of frame {pending[0]}"
                    )
                out[index] = frame.to_ndarray(format="rgb24")
                pending.pop(0)
                if not pending:
                    return
        raise BadVideoError(
            self.path,
            f"stream ended before frame {pending[0]} "
            f"(the index lists {self.num_frames} frames)",
        )

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Decodes every frame once, in order (uint8 RGB ``[H, W, 3]``).

        Raises:
          BadVideoError: decoding fails, or gives another number of frames
            than the index lists (then frame numbers would be ambiguous).
        """
        count = 0
        try:
            with self._open() as container:
                stream = container.streams[self._index.stream]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    count += 1
                    yield frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
            raise BadVideoError(self.path, f"decoding failed: {_reason(e)}") from e
        if count != self.num_frames:
            # Frame i must mean one picture for every reader of this file.
            raise BadVideoError(
                self.path,
                f"decoding gave {count} frames, the index lists {self.num_frames}",
            )


def probe_video(path: str | epath.Path) -> str | None:
    """Why ``path`` is not a video, or None when it may be one.

    Files with a suffix of :data:`VIDEO_EXTENSIONS` may be videos (they are
    checked when opened); suffixes of :data:`NOT_VIDEO_EXTENSIONS` are not.
    Any other file is opened with PyAV (the header only): a video is a file
    with a video stream in a format that is not a still-image format.
    """
    suffix = epath.Path(path).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return None
    if suffix in NOT_VIDEO_EXTENSIONS:
        return f"not a video ({suffix} file)"
    try:
        if _is_local(epath.Path(path)):
            container = av.open(str(path), "r")
        else:
            container = av.open(epath.Path(path).open("rb"), "r")
        with container:
            formats = container.format.name.split(",")
            if not container.streams.video:
                return "not a video: no video stream"
            if any(f in _IMAGE_FORMATS or f.endswith("_pipe") for f in formats):
                return f"not a video: a still image ({container.format.name})"
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
        return f"not a video: {_reason(e)}"
    return None


def all_files(root: epath.Path) -> list[epath.Path]:
    """``root`` itself if a file, else the files under it (no hidden names)."""
    if root.is_file():
        return [root]
    files = []
    for folder, subfolders, names in root.walk():
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        files.extend(folder / n for n in names if not n.startswith("."))
    return files


def find_videos(
    root: epath.Path, files: list[epath.Path] | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """The videos under ``root`` (sorted) and ``(path, reason)`` for the rest.

    Known video suffixes are taken, known other suffixes are not, and any
    other file is probed (:func:`probe_video`).
    """
    videos, skipped = [], []
    for p in sorted(all_files(root) if files is None else files, key=str):
        reason = probe_video(p)
        if reason is None:
            videos.append(str(p))
        else:
            skipped.append((str(p), reason))
    return videos, skipped
