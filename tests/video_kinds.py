"""Small videos in the containers and codecs real folders hold, written with PyAV.

Every frame carries its own number: a 16x16 block in the top-left corner of
value ``counter(i)``, on a texture that moves 2 px per frame. So which frame a
reader returned can be told from its pixels, independently of any timestamp.
"""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
from PIL import Image

NUM_FRAMES = 40
SIZE = (48, 64)
BLOCK = 16


def counter(i: int) -> int:
    """The corner value of frame ``i`` (distinct, 6 apart)."""
    return 12 + 6 * i


def frames(n: int = NUM_FRAMES, size=SIZE, seed: int = 0) -> np.ndarray:
    """uint8 [n, H, W, 3]: a moving smooth texture with a numbered corner."""
    h, w = size
    base = np.random.default_rng(seed).integers(0, 256, (h // 4, w // 4, 3))
    base = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((w, h)))
    out = np.stack([np.roll(base, 2 * i, axis=1) for i in range(n)])
    for i in range(n):
        out[i, :BLOCK, :BLOCK] = counter(i)
    return out


def frame_number(frame: np.ndarray) -> int:
    """The number a frame shows in its corner (nearest counter value)."""
    value = float(frame[2 : BLOCK - 2, 2 : BLOCK - 2].mean())
    return round((value - counter(0)) / (counter(1) - counter(0)))


def _write(path, codec, rate, pix="yuv420p", options=None, format=None,
           time_base=None, pts=None, data=None, bit_rate=None):  # fmt: skip
    """Encodes ``data`` (default :func:`frames`) into ``path``; returns it."""
    data = frames() if data is None else data
    with av.open(str(path), "w", format=format) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.height, stream.width = data.shape[1:3]
        stream.pix_fmt = pix
        stream.options = options or {}
        if bit_rate is not None:
            stream.codec_context.bit_rate = bit_rate
        if time_base is not None:
            stream.codec_context.time_base = time_base
        for i, image in enumerate(data):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pix != "yuv420p":
                frame = frame.reformat(format=pix)
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return str(path)


# Irregular frame durations in ms (variable frame rate), 40 frames.
VFR_MS = np.concatenate(
    [[0], np.cumsum(np.random.default_rng(1).choice([20, 33, 50, 100], NUM_FRAMES - 1))]
).astype(int)


def write_kinds(root: Path) -> dict[str, str]:
    """name -> path of one video per kind, each of :data:`NUM_FRAMES` frames."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ms = fractions.Fraction(1, 1000)
    return {
        # H.264 with B-frames (pts != dts), 29.97 fps, a keyframe every 12.
        "mp4_h264_bframes": _write(
            root / "bframes.mp4", "libx264", fractions.Fraction(30000, 1001),
            options={"x264-params": "bframes=3:b-adapt=0:keyint=12:scenecut=0"},
        ),
        # Variable frame rate: irregular timestamps, one keyframe.
        "mp4_vfr": _write(
            root / "vfr.mp4", "libx264", 30, time_base=ms, pts=VFR_MS.tolist(),
        ),
        # MPEG-4 Part 2 in AVI at 24000/1001 fps.
        "avi_mpeg4_23.976": _write(
            root / "mpeg4.avi", "mpeg4", fractions.Fraction(24000, 1001),
            bit_rate=4_000_000,
        ),
        # Cinepak asked for a 1/1000000 time base: the AVI muxer writes a 1/600
        # tick with 40 ticks (empty chunks) per frame at 15 fps; the header
        # counts 1600 frames and says 600 fps.
        "avi_cinepak_fine_timebase": _write(
            root / "cinepak.avi", "cinepak", 15, pix="rgb24",
            time_base=fractions.Fraction(1, 1000000),
            pts=[i * 66667 for i in range(NUM_FRAMES)],
        ),
        # MPEG-2 program stream: no frame count in the header; timestamps
        # change after a seek.
        "mpg_mpeg2_ps": _write(root / "program.mpg", "mpeg2video", 25, format="mpeg"),
        # MPEG-2 transport stream: seeks go by decoding timestamps.
        "ts_mpeg2": _write(root / "transport.ts", "mpeg2video", 25, format="mpegts"),
        # DivX/XviD-style packed B-frames in AVI at 24000/1001 fps.
        "avi_mpeg4_packed_bframes": write_packed_bframes(root / "packed.avi"),
        "webm_vp9": _write(root / "clip.webm", "libvpx-vp9", 25),
        "mkv_h264": _write(
            root / "clip.mkv", "libx264", 25, options={"x264-params": "keyint=12"},
        ),
    }  # fmt: skip


def decode_all(path: str) -> np.ndarray:
    """Every frame by plain sequential decoding with PyAV (the reference)."""
    with av.open(path) as container:
        return np.stack(
            [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        )


# MPEG-4 part 2 start codes: a VOP (one picture), user data.
_VOP = b"\x00\x00\x01\xb6"
_USER_DATA = b"\x00\x00\x01\xb2"
# What DivX 5 writes as user data; the final "p" announces packed B-frames.
DIVX_PACKED_TAG = b"DivX503b1393p"


def _not_coded_vop(anchor: bytes, time_bits: int) -> bytes:
    """A 7-byte N-VOP: ``anchor``'s timing, P type, ``vop_coded`` = 0.

    After the start code a VOP header holds vop_coding_type (2 bits),
    modulo_time_base (ones ended by a zero), a marker bit, vop_time_increment
    (``time_bits`` bits) and a marker bit, then vop_coded; a zero and ones pad
    it to a byte.
    """
    bits = "".join(f"{b:08b}" for b in anchor[4:16])
    end = bits.index("0", 2) + 1 + 1 + time_bits + 1  # through the 2nd marker
    header = "01" + bits[2:end] + "0"  # P type, the same time, not coded
    header += "0" + "1" * (-(len(header) + 1) % 8)
    return _VOP + int(header, 2).to_bytes(len(header) // 8, "big")


def write_packed_bframes(path, rate=fractions.Fraction(24000, 1001), data=None):
    """An AVI of MPEG-4 part 2 with B-frames packed as DivX 5 and XviD pack them.

    PyAV's ``mpeg4`` encoder writes one B-frame between anchors
    (``max_b_frames=1``), each VOP in its own packet, in decoding order
    (I0 P2 B1 P4 B3 ...). Packing as DivX does: each anchor VOP and the B-VOP
    after it go into one packet, followed by a 7-byte not-coded VOP
    (:func:`_not_coded_vop`) as a placeholder, so there is still one packet
    per frame; the user data ``DivX503b1393p`` in every keyframe tells
    FFmpeg's decoder the stream is packed (it then decodes each packet's
    second VOP when the placeholder comes). This is what FFmpeg's
    ``mpeg4_unpack_bframes`` filter undoes. The AVI muxer stores one packet
    per tick; FFmpeg stamps each decoded picture with the tick of the packet
    it was decoded from, so decoding order gives timestamps 1, 3, 2, 5, 4, ...
    for frames 0, 1, 2, 3, 4.
    """
    data = frames() if data is None else data
    packets = []
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.height, stream.width = data.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.max_b_frames = 1
        stream.codec_context.gop_size = 12
        stream.codec_context.bit_rate = 4_000_000
        for image in [*data, None]:
            frame = (
                av.VideoFrame.from_ndarray(image, "rgb24")
                if image is not None
                else None
            )
            packets += [(bytes(p), p.pts, p.is_keyframe) for p in stream.encode(frame)]
        time_bits = (rate.numerator - 1).bit_length()  # the VOL's resolution
        ticks = 0
        i = 0
        while i < len(packets):
            vops, pts, key = packets[i]
            if key:  # the tag goes after the VOL header, before the VOP
                at = vops.index(_VOP)
                vops = vops[:at] + _USER_DATA + DIVX_PACKED_TAG + vops[at:]
            placeholder = None
            if i + 1 < len(packets) and packets[i + 1][1] < pts:  # a B follows
                anchor = vops[vops.index(_VOP) :]
                vops += packets[i + 1][0]
                placeholder = _not_coded_vop(anchor, time_bits)
                i += 1
            for payload, keyframe in ((vops, key), (placeholder, False)):
                if payload is not None:
                    packet = av.Packet(payload)
                    packet.stream, packet.time_base = stream, 1 / rate
                    packet.pts = packet.dts = ticks
                    packet.is_keyframe = keyframe
                    out.mux(packet)
                    ticks += 1
            i += 1
    return str(path)


def write_with_still(path, format="matroska", attached=False, data=None):
    """A file whose first video stream is a 1-frame grey still, then the video.

    ``attached``: the still is cover art (disposition ``attached_pic``; the
    MP4 muxer stores it as ``covr`` and lists it after the video).
    """
    data = frames() if data is None else data
    with av.open(str(path), "w", format=format) as out:
        still = out.add_stream("mjpeg", rate=25)
        still.height, still.width, still.pix_fmt = 32, 32, "yuvj420p"
        if attached:
            still.disposition = av.stream.Disposition.attached_pic
        video = out.add_stream("libx264", rate=25)
        video.height, video.width = data.shape[1:3]
        video.pix_fmt = "yuv420p"
        grey = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), "rgb24")
        out.mux(still.encode(grey.reformat(format="yuvj420p")))
        out.mux(still.encode())
        for image in data:
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, "rgb24")))
        out.mux(video.encode())
    return str(path)


def _palette_frame(image: np.ndarray, palette: Image.Image) -> av.VideoFrame:
    """A ``pal8`` frame of ``image`` in ``palette``'s 256 colours."""
    quantized = Image.fromarray(image).quantize(palette=palette, dither=0)
    argb = np.full((256, 4), 255, np.uint8)  # opaque
    argb[:, 1:] = np.asarray(palette.getpalette(), np.uint8).reshape(-1, 3)[:256]
    return av.VideoFrame.from_ndarray((np.asarray(quantized), argb), format="pal8")


def _write_with_others(path, codec, rate, *, pix="yuv420p", format=None,
                       options=None, bit_rate=None, data=None, audio=None,
                       audio_first=False, data_stream_first=False,
                       palette_per_frame=False):  # fmt: skip
    """Like :func:`_write`, with the other streams real files carry.

    ``audio``: an audio encoder; a 22.05 kHz stereo tone as long as the video
    is added after the video stream, or before it with ``audio_first``.
    ``data_stream_first``: a data stream (timed text cues) as stream 0.
    ``palette_per_frame`` (``pal8``): each frame in its own 256 colours (the
    AVI muxer stores each change as a palette-change chunk), else one palette.
    """
    data = frames() if data is None else data
    rate = fractions.Fraction(rate)
    with av.open(str(path), "w", format=format) as out:
        cues = None
        if data_stream_first:
            cues = out.add_data_stream()
            cues.time_base = fractions.Fraction(1, 1000)
        sound = None
        if audio and audio_first:
            sound = out.add_stream(audio, rate=22050)
        stream = out.add_stream(codec, rate=rate)
        stream.height, stream.width = data.shape[1:3]
        stream.pix_fmt = pix
        stream.options = options or {}
        if bit_rate is not None:
            stream.codec_context.bit_rate = bit_rate
        if audio and not audio_first:
            sound = out.add_stream(audio, rate=22050)
        if sound is not None:
            sound.options = {"strict": "experimental"}  # FFmpeg's own vorbis
            sound.codec_context.bit_rate = 64_000  # (wmav2 has no default)
        samples = 0
        # One palette for the clip, as a 256-colour animation has: the
        # corner numbers' greys and the texture's colours.
        greys = [[counter(i)] * 3 for i in range(len(data))]
        texture = Image.fromarray(np.concatenate(data, 1)).quantize(256 - len(greys))
        colours = np.asarray(texture.getpalette(), np.uint8).reshape(-1, 3)
        palette = Image.new("P", (1, 1))
        palette.putpalette(
            np.concatenate([greys, colours[: 256 - len(greys)]]).ravel().tolist()
        )
        for i, image in enumerate(data):
            if pix == "pal8" and palette_per_frame:
                frame = _palette_frame(image, Image.fromarray(image).quantize(256))
            elif pix == "pal8":
                frame = _palette_frame(image, palette)
            else:
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                if pix != "yuv420p":
                    frame = frame.reformat(format=pix)
            out.mux(stream.encode(frame))
            if cues is not None and i % 10 == 0:
                cue = av.Packet(f"cue {i}".encode())
                cue.stream, cue.time_base = cues, cues.time_base
                cue.pts = cue.dts = round(1000 * i / rate)
                out.mux(cue)
            if sound is not None:
                end = round(22050 * (i + 1) / rate)
                t = np.arange(samples, end) / 22050
                tone = np.sin(2 * np.pi * 440 * t).astype(np.float32) * 0.1
                chunk = av.AudioFrame.from_ndarray(
                    np.stack([tone, tone]), format="fltp", layout="stereo"
                )
                chunk.sample_rate, chunk.pts = 22050, samples
                samples = end
                out.mux(sound.encode(chunk))
        out.mux(stream.encode())
        if sound is not None:
            out.mux(sound.encode())
    return str(path)


# Sizes a codec insists on: H.263 takes only its standard picture sizes.
H263_SIZE = (96, 128)  # SQCIF
# The 2-frame transport stream: at 2 fps a 1-frame gap is within every gap
# range the configs draw (4 frames at 30 fps), so it still gives pairs.
SHORT_TS_FRAMES, SHORT_TS_FPS = 2, 2

# The kinds of issue 28's real-world folder that this machine's FFmpeg cannot
# encode: name -> (the encoder missing, what stands in for it).
NOT_WRITABLE = {
    "ogv_theora": ("libtheora", "nothing: Theora is not tested here"),
    "flv_vp6": ("vp6", "Sorenson H.263 (flv1) in FLV"),
    "asf_wmv9": ("wmv3", "WMV8 (wmv2) in ASF"),
}


def write_real_world_kinds(root: Path) -> dict[str, str]:
    """name -> path of one clip per container and codec of issue 28's folder.

    Each clip shows :func:`frames` (H.263: at :data:`H263_SIZE`; the MPEG-2
    TS: only :data:`SHORT_TS_FRAMES` frames), with the audio or data streams
    the real files had. :data:`NOT_WRITABLE` lists those FFmpeg here cannot
    encode.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return {
        "webm_vp8_vorbis": _write_with_others(
            root / "vp8_vorbis.webm", "libvpx", 25, audio="vorbis",
            options={"g": "12"}, bit_rate=1_000_000,
        ),
        "m1v_mpeg1_raw": _write(
            root / "raw.m1v", "mpeg1video", 25, format="mpeg1video",
            options={"g": "12"}, bit_rate=4_000_000,
        ),
        "flv_flv1_data_first": _write_with_others(
            root / "sorenson.flv", "flv", 25, data_stream_first=True,
            options={"g": "12"}, bit_rate=1_000_000,
        ),
        "asf_wmv2_audio_first": _write_with_others(
            root / "wmv2.wmv", "wmv2", 25, format="asf", audio="wmav2",
            audio_first=True, options={"g": "12"}, bit_rate=1_000_000,
        ),
        "3g2_h263": _write_with_others(
            root / "h263.3g2", "h263", 15, data=frames(size=H263_SIZE),
            options={"g": "12"}, bit_rate=1_000_000,
        ),
        "mkv_hevc_10bit": _write(
            root / "hevc10.mkv", "libx265", 25, pix="yuv420p10le",
            options={"x265-params": "keyint=12:min-keyint=12:crf=12:log-level=error"},
        ),
        "avi_msrle_pal8": _write_with_others(
            root / "msrle.avi", "msrle", 25, pix="pal8",
        ),
        "mov_qtrle": _write(root / "animation.mov", "qtrle", 25, pix="rgb24"),
        "mp4_mpeg4": _write(
            root / "mpeg4.mp4", "mpeg4", 25, options={"g": "12"},
            bit_rate=4_000_000,
        ),
        "ts_mpeg2_2frames": _write(
            root / "two.ts", "mpeg2video", SHORT_TS_FPS, format="mpegts",
            data=frames(SHORT_TS_FRAMES),
        ),
    }  # fmt: skip
