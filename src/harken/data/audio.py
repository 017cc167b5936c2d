"""Load one clip as float32 mono samples at the configured rate, or say exactly what is wrong.

Decoding is libsndfile's (through soundfile): WAV and WAVE_FORMAT_EXTENSIBLE of any subtype
(PCM 8/16/24/32, float 32/64), FLAC, and the other formats libsndfile recognises by content.
PCM is scaled to [-1, 1); float files are taken as they are.

Channel policy (``AudioConfig.channel``): ``select`` keeps channel ``channel_index`` (DCASE built
its single-channel sets from one microphone of an array, so selecting matches the data better
than a mix); ``mean`` averages all channels.  A file at another rate than
``AudioConfig.sample_rate`` is resampled with :func:`scipy.signal.resample_poly` (up/down reduced
by their gcd) when ``resample == "polyphase"``, and refused when it is ``"refuse"``.

Bad input never surfaces as a bare traceback.  :class:`~harken.errors.AudioError` (naming the
file or upload and the problem) for:

* a missing file, a folder, a file that cannot be read (permissions: PermissionError);
* an empty file (0 bytes);
* a file libsndfile does not recognise (e.g. text or HTML saved as ``.wav``), or a header it
  refuses;
* a truncated file: a WAV whose ``data`` chunk declares more bytes than follow it (libsndfile
  would silently return the part that is there; a clip cut short by an interrupted copy should
  not be scored as if it were whole), or any file that yields fewer frames than its header
  declares (a cut FLAC fails to decode);
* zero-length audio (a valid header with no frames);
* an implausible sample rate (below 1 kHz or above 768 kHz: a corrupt header, and resampling
  from it would allocate without bound) or more than 2**31 samples;
* a channel index outside the file's channels;
* NaN / Inf samples when ``nonfinite == "error"`` (the default: never a wrong number);
* another sample rate when ``resample == "refuse"`` (naming both rates).

:class:`~harken.errors.HarkenWarning` (the clip is still returned) for:

* NaN / Inf samples replaced by 0 when ``nonfinite == "zero"``;
* all-zero (silent) audio: it loads, and log-mel features floor at ``amin`` so they stay finite;
* clipped audio: more than :data:`CLIP_FRACTION` of the used samples at or beyond
  :data:`CLIP_LEVEL` of full scale.

An invalid ``AudioConfig`` value is a :class:`~harken.errors.ConfigError`.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from harken.config import AudioConfig
from harken.errors import AudioError, ConfigError, HarkenWarning

MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
MAX_SAMPLES = 2**31
# |x| >= CLIP_LEVEL counts as "at full scale" (16-bit full scale is 32767/32768 = 0.99997);
# a clean full-scale sine has ~3% of its samples there, so only a larger share warns.
CLIP_LEVEL = 0.999
CLIP_FRACTION = 0.05
_READ_BLOCK_SAMPLES = 1 << 22  # samples (all channels) per read: 16 MB of float32
_UNSET_DATA_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave the data size unset
_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, ValueError, TypeError, EOFError, struct.error)


@dataclass(frozen=True)
class AudioInfo:
    """What a clip's header says (no samples decoded)."""

    name: str
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def check_audio_config(config: AudioConfig) -> None:
    """Refuse an AudioConfig harken cannot apply (ConfigError, naming the field)."""
    if isinstance(config.sample_rate, bool) or not isinstance(config.sample_rate, int) or not (
        MIN_SAMPLE_RATE <= config.sample_rate <= MAX_SAMPLE_RATE
    ):
        raise ConfigError(
            f"audio.sample_rate must be an integer between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE}, "
            f"got {config.sample_rate!r}"
        )
    if config.channel not in ("select", "mean"):
        raise ConfigError(f"audio.channel must be 'select' or 'mean', got {config.channel!r}")
    if isinstance(config.channel_index, bool) or not isinstance(config.channel_index, int) or config.channel_index < 0:
        raise ConfigError(f"audio.channel_index must be a non-negative integer, got {config.channel_index!r}")
    if config.resample not in ("polyphase", "refuse"):
        raise ConfigError(f"audio.resample must be 'polyphase' or 'refuse', got {config.resample!r}")
    if config.nonfinite not in ("error", "zero"):
        raise ConfigError(f"audio.nonfinite must be 'error' or 'zero', got {config.nonfinite!r}")


# ----------------------------------------------------------------------------- public API
def load_audio(path: str | Path, config: AudioConfig | None = None) -> np.ndarray:
    """The clip at ``path`` as a 1-D float32 array at ``config.sample_rate`` (see module doc)."""
    config = config or AudioConfig()
    check_audio_config(config)
    path = Path(path)
    size = _file_size(path)
    try:
        with open(path, "rb") as fh:
            return _decode(fh, size, str(path), config)
    except PermissionError:
        raise AudioError("cannot read the file (permission denied)", path=path) from None
    except OSError as exc:
        raise AudioError(f"cannot read the file ({exc.strerror or exc})", path=path) from None


def load_audio_bytes(data: bytes, config: AudioConfig | None = None, *, name: str) -> np.ndarray:
    """Like :func:`load_audio` for an upload held in memory; ``name`` labels every message."""
    config = config or AudioConfig()
    check_audio_config(config)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioError(f"upload must be bytes, got {type(data).__name__}", path=name)
    data = bytes(data)
    if not data:
        raise AudioError("empty upload (0 bytes)", path=name)
    return _decode(io.BytesIO(data), len(data), name, config)


def audio_info(path: str | Path) -> AudioInfo:
    """Header facts of the clip at ``path``, after the same file checks as load_audio."""
    path = Path(path)
    size = _file_size(path)
    try:
        with open(path, "rb") as fh:
            _check_wav_truncation(fh, size, str(path))
            with _open_sound(fh, str(path)) as snd:
                info = AudioInfo(str(path), snd.samplerate, snd.channels, snd.frames, snd.format, snd.subtype)
    except PermissionError:
        raise AudioError("cannot read the file (permission denied)", path=path) from None
    except OSError as exc:
        raise AudioError(f"cannot read the file ({exc.strerror or exc})", path=path) from None
    _check_header(info.sample_rate, info.channels, info.frames, info.name)
    return info


# ----------------------------------------------------------------------------- internals
def _file_size(path: Path) -> int:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioError("no such file", path=path) from None
    except PermissionError:
        raise AudioError("cannot read the file (permission denied)", path=path) from None
    except OSError as exc:
        raise AudioError(f"cannot read the file ({exc.strerror or exc})", path=path) from None
    if path.is_dir():
        raise AudioError("is a folder, not an audio file", path=path)
    if st.st_size == 0:
        raise AudioError("empty file (0 bytes)", path=path)
    return st.st_size


def _check_wav_truncation(fh: BinaryIO, size: int, name: str) -> None:
    """Refuse a RIFF/WAVE file whose data chunk runs past the end of the file."""
    fh.seek(0)
    head = fh.read(12)
    try:
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not a little-endian RIFF WAV: libsndfile and the frame count check it
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                available = size - (pos + 8)
                if chunk_size not in _UNSET_DATA_SIZES and chunk_size > available:
                    raise AudioError(
                        f"truncated WAV: its data chunk declares {chunk_size} bytes but only "
                        f"{available} follow",
                        path=name,
                    )
                return
            pos += 8 + chunk_size + (chunk_size & 1)
    finally:
        fh.seek(0)


def _libsndfile_message(exc: Exception) -> str:
    text = getattr(exc, "error_string", None) or str(exc)
    return text.strip().rstrip(".") or type(exc).__name__


def _open_sound(fh: BinaryIO, name: str) -> sf.SoundFile:
    try:
        return sf.SoundFile(fh)
    except _DECODE_ERRORS as exc:
        raise AudioError(
            f"not a readable audio file (libsndfile: {_libsndfile_message(exc)})", path=name
        ) from None


def _check_header(sample_rate: int, channels: int, frames: int, name: str) -> None:
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"implausible sample rate {sample_rate} Hz in the header (corrupt file?)", path=name
        )
    if channels < 1:
        raise AudioError(f"header declares {channels} channels", path=name)
    if frames <= 0:
        raise AudioError("zero-length audio: the file holds no samples", path=name)
    if frames * channels > MAX_SAMPLES:
        raise AudioError(
            f"{frames} frames x {channels} channels is too long to load at once", path=name
        )


def _decode(fh: BinaryIO, size: int, name: str, config: AudioConfig) -> np.ndarray:
    _check_wav_truncation(fh, size, name)
    with _open_sound(fh, name) as snd:
        sample_rate, channels, frames = snd.samplerate, snd.channels, snd.frames
        _check_header(sample_rate, channels, frames, name)
        try:
            data = _read_frames(snd, frames)
        except _DECODE_ERRORS as exc:
            raise AudioError(
                f"truncated or corrupt audio data (libsndfile: {_libsndfile_message(exc)})",
                path=name,
            ) from None
    if data.shape[0] < frames:
        raise AudioError(
            f"truncated audio: the header declares {frames} frames but only {data.shape[0]} "
            "could be read",
            path=name,
        )
    if data.shape[0] == 0:
        raise AudioError("zero-length audio: the file holds no samples", path=name)

    if config.channel == "select":
        if config.channel_index >= channels:
            raise AudioError(
                f"audio.channel_index {config.channel_index} is out of range: the file has "
                f"{channels} channel(s) (0..{channels - 1})",
                path=name,
            )
        used = data[:, config.channel_index : config.channel_index + 1]
    else:
        used = data

    finite = np.isfinite(used)
    if not finite.all():
        bad = int(used.size - np.count_nonzero(finite))
        if config.nonfinite == "error":
            raise AudioError(
                f"{bad} NaN/Inf sample(s) (audio.nonfinite is 'error'; 'zero' replaces them)",
                path=name,
            )
        used = np.where(finite, used, np.float32(0.0))
        _warn(name, f"{bad} NaN/Inf sample(s) replaced by 0")

    clipped = float(np.mean(np.abs(used) >= CLIP_LEVEL))
    if clipped > CLIP_FRACTION:
        _warn(name, f"clipped audio: {clipped:.1%} of samples at full scale")

    mono = used[:, 0] if used.shape[1] == 1 else used.mean(axis=1, dtype=np.float64)
    if not np.any(mono):
        _warn(name, "silent audio: every sample is zero")

    if sample_rate != config.sample_rate:
        if config.resample == "refuse":
            raise AudioError(
                f"sample rate is {sample_rate} Hz, expected {config.sample_rate} Hz "
                "(audio.resample is 'refuse'; 'polyphase' resamples)",
                path=name,
            )
        from scipy.signal import resample_poly  # scipy.signal takes ~1 s to import; only here

        g = math.gcd(sample_rate, config.sample_rate)
        mono = resample_poly(np.asarray(mono, dtype=np.float64), config.sample_rate // g, sample_rate // g)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _read_frames(snd: sf.SoundFile, frames: int) -> np.ndarray:
    # Block by block, so a header that claims far more frames than the file holds cannot make
    # us allocate for the claim; what is really there decides the size.
    blocks = []
    remaining = frames
    while remaining > 0:
        per_block = max(1, _READ_BLOCK_SAMPLES // snd.channels)
        block = snd.read(min(per_block, remaining), dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        blocks.append(block)
        remaining -= block.shape[0]
    if not blocks:
        return np.zeros((0, snd.channels), dtype=np.float32)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _warn(name: str, message: str) -> None:
    warnings.warn(f"{name}: {message}", HarkenWarning, stacklevel=4)
