"""Stream facts about an audio file: codec, duration, sample rate, channels, bitrate.

Mutagen reads them from the headers, which is fast. Headers can lie (an old Monkey's Audio file
that claims 11,000 hours, an MP3 stream inside a WAV file described as PCM, a DSF whose sample
count is zero), so every answer is checked for sanity, and where it fails FFmpeg (through PyAV)
opens the stream and gives its own. A file neither can make sense of is an error with a reason.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import mutagen
import mutagen.aac
import mutagen.ac3
import mutagen.aiff
import mutagen.apev2
import mutagen.asf
import mutagen.dsdiff
import mutagen.dsf
import mutagen.flac
import mutagen.monkeysaudio
import mutagen.mp3
import mutagen.mp4
import mutagen.musepack
import mutagen.oggflac
import mutagen.oggopus
import mutagen.oggspeex
import mutagen.oggvorbis
import mutagen.optimfrog
import mutagen.tak
import mutagen.trueaudio
import mutagen.wave
import mutagen.wavpack

from jamcaps_desktop.audio.container import open_container

log = logging.getLogger(__name__)

MAX_DURATION = 7 * 24 * 3600.0
MIN_BITRATE = 100  # bits per second a real encoded stream never goes below


class ProbeError(Exception):
    """The file is not usable audio; the message is the plain reason shown to the user."""


@dataclass
class StreamInfo:
    container: str
    codec: str | None
    duration: float | None
    sample_rate: int | None
    channels: int | None
    bitrate: int | None
    bits_per_sample: int | None
    source: str = "header"  # "header" (mutagen) or "ffmpeg" (PyAV)
    estimated: bool = False  # the header gives no length; it was estimated from the bitrate


_OGG_CLASSES = {
    "vorbis": mutagen.oggvorbis.OggVorbis,
    "opus": mutagen.oggopus.OggOpus,
    "flac": mutagen.oggflac.OggFLAC,
    "speex": mutagen.oggspeex.OggSpeex,
}

MUTAGEN_CLASSES: dict[str, type[mutagen.FileType]] = {
    "mp3": mutagen.mp3.MP3,
    "mpeg": mutagen.mp3.MP3,
    "flac": mutagen.flac.FLAC,
    "mp4": mutagen.mp4.MP4,
    "wav": mutagen.wave.WAVE,
    "aiff": mutagen.aiff.AIFF,
    "asf": mutagen.asf.ASF,
    "ape": mutagen.monkeysaudio.MonkeysAudio,
    "wavpack": mutagen.wavpack.WavPack,
    "musepack": mutagen.musepack.Musepack,
    "dsf": mutagen.dsf.DSF,
    "dff": mutagen.dsdiff.DSDIFF,
    "tta": mutagen.trueaudio.TrueAudio,
    "tak": mutagen.tak.TAK,
    "optimfrog": mutagen.optimfrog.OptimFROG,
    "aac": mutagen.aac.AAC,
    "ac3": mutagen.ac3.AC3,
}

# Containers whose decoded audio the rest of the app can use. FFmpeg has no OptimFROG decoder, so
# such files are recognised but reported as unusable.
FFMPEG_UNDECODABLE = {"optimfrog"}


def mutagen_class(container: str, codec: str | None) -> type[mutagen.FileType] | None:
    if container == "ogg":
        return _OGG_CLASSES.get(codec or "")
    return MUTAGEN_CLASSES.get(container)


def open_mutagen(path: str, container: str, codec: str | None) -> mutagen.FileType:
    """Open ``path`` with the mutagen class its content calls for (not the one its name suggests)."""
    cls = mutagen_class(container, codec)
    try:
        if cls is None:
            opened = mutagen.File(path)
            if opened is None:
                raise ProbeError(f"unsupported {container} stream ({codec or 'unknown codec'})")
            return opened
        return cls(path)
    except ProbeError:
        raise
    except PermissionError as exc:
        raise ProbeError("permission denied") from exc
    except OSError as exc:
        raise ProbeError(f"cannot read the file: {exc.strerror or exc}") from exc
    except Exception as exc:  # mutagen raises many types for broken files
        raise ProbeError(f"damaged or truncated {container} file: {_mutagen_reason(exc)}") from exc


def _mutagen_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


def _mp4_codec(codec: str | None) -> str | None:
    if not codec:
        return None
    if codec.startswith("mp4a.40"):
        return "aac"
    if codec in ("mp4a.69", "mp4a.6B", "mp4a.6b"):
        return "mp3"
    return {"ac-3": "ac3", "ec-3": "eac3"}.get(codec, codec)


def _asf_codec(codec_type: str | None) -> str | None:
    if not codec_type:
        return None
    lowered = codec_type.lower()
    for word, name in (("lossless", "wmalossless"), ("professional", "wmapro"), ("voice", "wmavoice")):
        if word in lowered:
            return name
    return "wmav2" if "windows media audio" in lowered else codec_type


def stream_info_from_mutagen(opened: mutagen.FileType, container: str, codec: str | None,
                             size: int) -> StreamInfo:
    info = opened.info
    duration = _float_or_none(getattr(info, "length", None))
    sample_rate = _int_or_none(getattr(info, "sample_rate", None))
    channels = _int_or_none(getattr(info, "channels", None))
    bitrate = _int_or_none(getattr(info, "bitrate", None))
    bits = _int_or_none(getattr(info, "bits_per_sample", None))
    if container == "mp4":
        codec = _mp4_codec(getattr(info, "codec", None)) or codec
    elif container == "asf":
        codec = _asf_codec(getattr(info, "codec_type", None)) or codec
    elif container == "ac3":
        codec = {"ac-3": "ac3", "ec-3": "eac3"}.get(getattr(info, "codec", ""), codec)
    elif container == "aiff" and bits:
        codec = f"pcm_s{bits}be"
    elif container == "flac" or (container == "ogg" and codec == "flac"):
        codec = "flac"
    if container == "ogg" and codec == "opus":
        sample_rate = sample_rate or 48000  # Opus always decodes at 48 kHz
    if (not bitrate or bitrate <= 0) and duration and duration > 0:
        bitrate = int(size * 8 / duration)
    # An MP3 without a Xing/VBRI/LAME header states no length: mutagen estimates it from the first
    # frame's bitrate, which is wrong for variable-bitrate files.
    estimated = container in ("mp3", "mpeg") and getattr(info, "bitrate_mode", None) == 0
    return StreamInfo(container, codec, duration, sample_rate, channels, bitrate, bits, estimated=estimated)


def _float_or_none(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int_or_none(value: object) -> int | None:
    if value is None:
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def insane_reason(info: StreamInfo, size: int) -> str | None:
    """Why a header's stream facts cannot be true, or None when they are plausible."""
    if info.duration is None or info.duration <= 0:
        return "no duration in the header"
    if info.duration > MAX_DURATION:
        return f"the header claims a duration of {info.duration / 3600:.0f} hours"
    if info.sample_rate is not None and not 1000 <= info.sample_rate <= 50_000_000:
        return f"the header claims a sample rate of {info.sample_rate} Hz"
    if info.channels is not None and not 1 <= info.channels <= 64:
        return f"the header claims {info.channels} channels"
    if size * 8 / info.duration < MIN_BITRATE:
        return f"the header claims {info.duration:.0f} s of audio in {size} bytes"
    if info.container in ("wav", "aiff") and info.codec and not info.codec.startswith("pcm"):
        return f"{info.container.upper()} holding {info.codec}, whose duration the header does not give"
    return None


def probe_with_ffmpeg(path: str, container: str, size: int) -> StreamInfo:
    """Open the file with FFmpeg (PyAV) and read the first audio stream's facts."""
    import av  # imported lazily: scanning mostly never needs it

    try:
        with open_container(path) as handle:
            streams = [s for s in handle.streams if s.type == "audio"]
            if not streams:
                raise ProbeError("the file has no audio stream")
            stream = streams[0]
            ctx = stream.codec_context
            if ctx is None:
                raise ProbeError("no decoder for this audio format")
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            if (duration is None or duration <= 0) and handle.duration:
                duration = handle.duration / 1_000_000
            sample_rate = ctx.sample_rate or None
            channels = getattr(ctx, "channels", None) or None
            bitrate = ctx.bit_rate or handle.bit_rate or None
            codec = ctx.name
    except ProbeError:
        raise
    except av.error.FFmpegError as exc:
        raise ProbeError(f"the audio stream cannot be read ({_ffmpeg_reason(exc)})") from exc
    except (EOFError, OSError) as exc:
        raise ProbeError(f"the audio stream cannot be read ({exc})") from exc
    codec = {"mp3float": "mp3", "mp2float": "mp2", "mpc7": "musepack_sv7", "mpc8": "musepack_sv8"}.get(
        codec, codec)
    if codec and codec.startswith("dsd_"):
        codec = "dsd"
    if (not bitrate) and duration:
        bitrate = int(size * 8 / duration)
    return StreamInfo(container, codec, duration, sample_rate, channels, bitrate, None, source="ffmpeg")


def _ffmpeg_reason(exc: Exception) -> str:
    message = getattr(exc, "strerror", None) or str(exc)
    return str(message).split(":")[0].strip().lower() or type(exc).__name__


def checked_stream_info(path: str, opened: mutagen.FileType, container: str, codec: str | None,
                        size: int) -> StreamInfo:
    """Header facts when they are plausible, FFmpeg's otherwise; ProbeError when neither works."""
    info = stream_info_from_mutagen(opened, container, codec, size)
    if container in FFMPEG_UNDECODABLE:
        raise ProbeError(f"{container} audio is recognised but cannot be decoded (no decoder available)")
    problem = insane_reason(info, size)
    if problem is None:
        return info
    log.debug("%s: %s; asking FFmpeg", path, problem)
    try:
        probed = probe_with_ffmpeg(path, container, size)
    except ProbeError as exc:
        raise ProbeError(f"{problem}, and {exc}") from exc
    still = insane_reason(probed, size)
    if still is not None and not still.startswith(container.upper()):
        raise ProbeError(f"{problem}; FFmpeg agrees that the stream is unusable ({still})")
    return _merge(info, probed)


def _merge(header: StreamInfo, probed: StreamInfo) -> StreamInfo:
    """FFmpeg's duration and bitrate; the header's other facts where they are plausible."""
    sample_rate = header.sample_rate if header.sample_rate and 1000 <= header.sample_rate <= 50_000_000 \
        else probed.sample_rate
    channels = header.channels if header.channels and 1 <= header.channels <= 64 else probed.channels
    return StreamInfo(
        container=header.container,
        codec=header.codec or probed.codec,
        duration=probed.duration,
        sample_rate=sample_rate,
        channels=channels,
        bitrate=probed.bitrate,
        bits_per_sample=header.bits_per_sample or None,
        source="ffmpeg",
    )


# Formats whose header states the length (a sample or frame count, a play duration, a chunk size):
# a file cut short still claims the full length, so the end of the stream is checked against it.
COMPLETENESS_CHECKED = {
    "flac", "wavpack", "mp4", "aiff", "wav", "dsf", "dff", "tak", "tta", "musepack", "mp3", "asf", "ape",
}
_TAIL_SECONDS = 1.5
_MAX_TAIL_PACKETS = 4000


def _format_time(seconds: float) -> str:
    minutes, secs = divmod(max(seconds, 0.0), 60)
    return f"{int(minutes)}:{secs:04.1f}"


def check_complete(path: str, info: StreamInfo) -> None:
    """Raise ProbeError when the audio stops well before the length the header promises.

    Only a few milliseconds per file: FFmpeg seeks close to the promised end and reads the last
    packets. Where FFmpeg cannot open the file at all the check is skipped: mutagen understood it,
    and decoding problems are reported when the track is analysed. Where the length was only an
    estimate (an MP3 without a length header), the end found replaces it instead.
    """
    if info.container == "ogg":
        _check_ogg_end(path)
        return
    if info.container not in COMPLETENESS_CHECKED or info.source != "header" or not info.duration:
        return
    import av

    try:
        handle = open_container(path)
    except (av.error.FFmpegError, OSError, EOFError):
        return
    try:
        if not handle.streams.audio:
            return
        stream = handle.streams.audio[0]
        base = stream.time_base
        if base is None:
            return
        if info.duration > 2 * _TAIL_SECONDS:
            with contextlib.suppress(av.error.FFmpegError, OverflowError):
                handle.seek(int((info.duration - _TAIL_SECONDS) / base), stream=stream, backward=True)
        end = 0.0
        try:
            for count, packet in enumerate(handle.demux(stream)):
                if packet.pts is not None and packet.duration:
                    end = max(end, float((packet.pts + packet.duration) * base))
                if count > _MAX_TAIL_PACKETS:
                    return
        except (av.error.FFmpegError, EOFError):
            pass
    finally:
        handle.close()
    tolerance = max(0.25, 0.02 * info.duration)
    if info.estimated and end > 0:
        if abs(end - info.duration) > tolerance:
            info.bitrate = int(info.bitrate * info.duration / end) if info.bitrate else None
            info.duration = end
        return
    if end < info.duration - tolerance:
        if end <= 0:
            raise ProbeError(f"truncated: the header promises {_format_time(info.duration)} of audio "
                             "but no audio data could be read")
        raise ProbeError(f"truncated: the header promises {_format_time(info.duration)} of audio "
                         f"but the file ends at {_format_time(end)}")


_OGG_EOS = 0x04
_OGG_TAIL = 128 * 1024


def _check_ogg_end(path: str) -> None:
    """An Ogg file ends with a whole page flagged end-of-stream; a cut one does not.

    Ogg has no header that states the length, so a cut file just looks shorter: this is the only
    sign of it.
    """
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        start = max(0, size - _OGG_TAIL)
        handle.seek(start)
        tail = handle.read()
    position = tail.rfind(b"OggS")
    while position >= 0:
        header = tail[position:position + 27]
        if len(header) == 27 and header[4] == 0:
            segments = header[26]
            lacing = tail[position + 27:position + 27 + segments]
            end = position + 27 + segments + sum(lacing)
            if len(lacing) == segments and end <= len(tail):
                # Whatever follows the last whole page may be an appended tag, but not the start of
                # another page: that one was cut off.
                if tail[end:end + 4] == b"OggS":
                    raise ProbeError("truncated: the last Ogg page is cut off")
                if not header[5] & _OGG_EOS:
                    raise ProbeError("truncated: the Ogg stream stops without its end-of-stream page")
                return
        position = tail.rfind(b"OggS", 0, position)
    if size <= _OGG_TAIL:
        raise ProbeError("truncated: no complete Ogg page")
