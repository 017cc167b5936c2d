"""Content-keyed, memory-mapped store of dB log-mel features.

Decoding, resampling and the STFT of every clip would otherwise be redone each epoch and by
every system, so each clip's features are computed once and kept as one ``.npy`` file:

    <root>/v<FORMAT>-<config key>/<hh>/<content key>.npy      (float16 [n_mels, n_frames])
    <root>/v<FORMAT>-<config key>/config.json                 (the configuration, for people)

* The *content key* is a BLAKE2b digest of the audio file's bytes, not its path or mtime:
  renaming or copying a data set keeps its cache, and a file whose bytes change gets new
  features.  Within one process the digest is remembered per (path, size, mtime, ctime, inode), and
  only for files last modified more than :data:`RACY_SECONDS` before they were hashed, so a
  rewrite inside the file system's timestamp granularity is never missed (git's "racy clean"
  rule).
* The *config key* hashes ``asdict(AudioConfig)`` and ``asdict(FeatureConfig)`` (and the
  format version): any change to either selects another directory, so stale features are
  never served.  Old directories stay until :meth:`FeatureCache.clear`.
* Entries are written atomically (temporary file, fsync, rename; :mod:`harken.atomic`), so a
  reader never sees half a file; and every load is validated (``.npy`` header, dtype, band
  count, file size, finite values).  A truncated or corrupt entry (a disk error, a copy cut
  short) is deleted and rebuilt with a :class:`~harken.errors.HarkenWarning`.
* Loads are ``np.load(mmap_mode="r")``: a DCASE-scale set (about 8,400 ten-second clips,
  2.2 GB in float16) is not held in RAM, the page cache serves what training touches.

Parallel builds (``workers``): see :meth:`FeatureCache.build` and ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harken.atomic import atomic_open, atomic_write_json
from harken.config import AudioConfig, FeatureConfig
from harken.data.audio import load_audio
from harken.errors import AudioError, CacheError, ConfigError, HarkenWarning
from harken.features.logmel import LogMel

#: bump when the stored numbers change meaning (a LogMel fix), to invalidate every entry
CACHE_FORMAT = 1
#: a file modified less than this long before it was hashed is re-hashed on every lookup
RACY_SECONDS = 2.0
CACHE_DIR_NAME = ".harken-cache"
_CONFIG_DIR = re.compile(r"^v\d+-[0-9a-f]{16}$")
_HASH_BLOCK = 1 << 20
_DTYPES = ("float16", "float32")


def cache_dir_for(data_root: str | Path) -> Path:
    """The conventional cache location beside a data set: ``<data root>/.harken-cache``."""
    return Path(data_root) / CACHE_DIR_NAME


def config_key(audio: AudioConfig, features: FeatureConfig) -> str:
    """16 hex digits identifying everything that shapes a cached entry's numbers."""
    payload = json.dumps(
        {"format": CACHE_FORMAT, "audio": asdict(audio), "features": asdict(features)},
        sort_keys=True,
    )
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def file_digest(path: str | Path) -> str:
    """BLAKE2b-128 of a file's bytes (32 hex digits); unreadable files are AudioError."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                h.update(block)
    except FileNotFoundError:
        raise AudioError("no such file", path=path) from None
    except IsADirectoryError:
        raise AudioError("is a folder, not an audio file", path=path) from None
    except OSError as exc:
        raise AudioError(f"cannot read the file ({exc.strerror or exc})", path=path) from None
    return h.hexdigest()


class FeatureCache:
    """Log-mel features of audio files, computed once per (file content, configuration).

    ``get`` and ``build`` return read-only memory-mapped ``[n_mels, n_frames]`` arrays in
    ``features.cache_dtype``; convert with ``np.asarray(x, dtype=np.float32)`` where float32 is
    needed.  Audio that cannot be loaded raises :class:`~harken.errors.AudioError` naming the
    file; whether to skip it or stop is the caller's decision.
    """

    def __init__(
        self,
        root: str | Path,
        audio: AudioConfig | None = None,
        features: FeatureConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        stft: str = "fft",
    ) -> None:
        self.root = Path(root)
        self.audio = audio if audio is not None else AudioConfig()
        self.features = features if features is not None else FeatureConfig()
        if self.features.cache_dtype not in _DTYPES:
            raise ConfigError(
                f"features.cache_dtype must be one of {_DTYPES}, got {self.features.cache_dtype!r}"
            )
        self.dtype = np.dtype(self.features.cache_dtype)
        self.key = config_key(self.audio, self.features)
        self.dir = self.root / f"v{CACHE_FORMAT}-{self.key}"
        self.device = torch.device(device)
        self.stft = stft
        self._logmel: LogMel | None = None
        self._digests: dict[str, tuple[tuple[int, ...], str]] = {}
        self._lock = threading.Lock()
        #: entries this instance computed (and wrote); a cache hit leaves it unchanged
        self.computed = 0

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.dir)!r})"

    # ------------------------------------------------------------------ public API
    def entry_path(self, path: str | Path) -> Path:
        """Where the features of the audio file at ``path`` (its current bytes) are stored."""
        return self._entry_file(self.content_key(path))

    def content_key(self, path: str | Path) -> str:
        """The content digest of ``path``, remembered while the file stays unchanged."""
        path = Path(path)
        name = os.path.abspath(path)
        try:
            st = os.stat(name)
        except FileNotFoundError:
            raise AudioError("no such file", path=path) from None
        except OSError as exc:
            raise AudioError(f"cannot read the file ({exc.strerror or exc})", path=path) from None
        # ctime too: unlike mtime it cannot be set back by a copy tool or os.utime.
        sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
        with self._lock:
            known = self._digests.get(name)
        if known is not None and known[0] == sig:
            return known[1]
        started = time.time()
        digest = file_digest(path)
        if started - st.st_mtime_ns / 1e9 > RACY_SECONDS:
            with self._lock:
                self._digests[name] = (sig, digest)
        return digest

    def get(self, path: str | Path) -> np.ndarray:
        """Features of one file, computed and stored first if missing or corrupt."""
        digest = self.content_key(path)
        entry = self._open(digest)
        if entry is not None:
            return entry
        wave = load_audio(path, self.audio)
        self._store(digest, self._compute([wave])[0], path)
        return self._open_fresh(digest, path)

    def build(
        self,
        paths: Sequence[str | Path],
        *,
        workers: int = 0,
        progress: bool = True,
        batch_size: int = 16,
    ) -> list[np.ndarray]:
        """Features of every file in ``paths`` (same order), computing the missing ones.

        On CPU, ``workers`` threads (0: one per usable core, at most 8) each decode, compute
        and write whole clips, with torch single-threaded for the duration of the build (its
        thread count is restored afterwards; other threads of this process running torch
        meanwhile run single-threaded too).  Data parallelism over clips needs no
        synchronisation per operation; on the shared 2-core benchmark machine it built 3.5x
        faster than a 2-process pool and several times faster than one thread driving torch's
        intra-op threads, whose per-operation barriers stall whenever another process holds a
        core (``benchmarks/RESULTS.md``).  Each task batches up to ``batch_size``
        equal-length clips through :class:`LogMel`.

        On a GPU (``device``), this thread sends batches of ``batch_size`` equal-length clips
        to the device while ``workers`` threads (0: 2) decode ahead.
        """
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        on_cpu = self.device.type == "cpu"
        if workers == 0:
            workers = min(_usable_cores(), 8) if on_cpu else 2
        paths = [Path(p) for p in paths]
        digests = self._digest_all(paths, threads=workers)
        found: dict[str, np.ndarray] = {}
        missing: dict[str, Path] = {}
        for path, digest in zip(paths, digests, strict=True):
            if digest in found or digest in missing:
                continue
            entry = self._open(digest)
            if entry is None:
                missing[digest] = path
            else:
                found[digest] = entry
        if missing:
            todo = list(missing.items())
            bar = _progress_bar(
                len(todo), progress, f"log-mel features ({len(todo)} of {len(paths)} clips)"
            )
            try:
                if on_cpu:
                    self._build_cpu(todo, workers, batch_size, bar)
                else:
                    self._build_device(todo, workers, batch_size, bar)
            finally:
                bar.close()
        for digest, path in missing.items():
            found[digest] = self._open_fresh(digest, path)
        return [found[d] for d in digests]

    def size_bytes(self) -> int:
        """Bytes of every entry under ``root`` (all configurations)."""
        total = 0
        for directory in self._config_dirs():
            for dirpath, _, files in os.walk(directory):
                for name in files:
                    with contextlib.suppress(FileNotFoundError):
                        total += os.path.getsize(os.path.join(dirpath, name))
        return total

    def clear(self) -> None:
        """Delete every entry harken wrote under ``root`` (all configurations), nothing else."""
        for directory in self._config_dirs():
            shutil.rmtree(directory, ignore_errors=True)
        with self._lock:
            self._digests.clear()

    # ------------------------------------------------------------------ entries
    def _entry_file(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npy"

    def _config_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_dir() and _CONFIG_DIR.match(p.name)]

    def _open(self, digest: str) -> np.ndarray | None:
        """The stored entry, or None when absent or corrupt (a corrupt one is deleted)."""
        file = self._entry_file(digest)
        try:
            return self._validated(file)
        except FileNotFoundError:
            return None
        except CacheError as exc:
            warnings.warn(HarkenWarning(f"{exc}; deleting it and recomputing"), stacklevel=3)
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
            return None

    def _open_fresh(self, digest: str, path: Path) -> np.ndarray:
        # Right after a write: a failure now is the disk's, not a stale entry's.
        try:
            return self._validated(self._entry_file(digest))
        except (FileNotFoundError, CacheError) as exc:
            raise CacheError(
                f"cache entry for this file vanished or is unreadable right after writing it ({exc})",
                path=path,
            ) from None

    def _validated(self, file: Path) -> np.ndarray:
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise CacheError(f"corrupt cache entry ({exc})", path=file) from None
        if not isinstance(arr, np.memmap):
            raise CacheError("corrupt cache entry (not a plain .npy array)", path=file)
        if (
            arr.dtype != self.dtype
            or arr.ndim != 2
            or arr.shape[0] != self.features.n_mels
            or arr.shape[1] < 1
        ):
            raise CacheError(
                f"cache entry has dtype {arr.dtype} shape {arr.shape}, expected {self.dtype} [{self.features.n_mels}, T]",
                path=file,
            )
        size = os.path.getsize(file)
        if size != arr.offset + arr.nbytes:
            raise CacheError(
                f"cache entry is {size} bytes, its header says {arr.offset + arr.nbytes}", path=file
            )
        if not np.isfinite(arr).all():
            raise CacheError(
                "cache entry holds NaN or Inf (log-mel values are always finite)", path=file
            )
        return arr

    def _store(self, digest: str, spec: np.ndarray, source: Path | str) -> None:
        expected = self.features.n_mels
        if spec.ndim != 2 or spec.shape[0] != expected:
            raise CacheError(f"refusing to store features of shape {spec.shape}", path=source)
        if not self.dir.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(
                self.dir / "config.json",
                {
                    "format": CACHE_FORMAT,
                    "audio": asdict(self.audio),
                    "features": asdict(self.features),
                },
            )
        with atomic_open(self._entry_file(digest), "wb") as fh:
            np.save(fh, np.ascontiguousarray(spec, dtype=self.dtype), allow_pickle=False)
        with self._lock:
            self.computed += 1

    # ------------------------------------------------------------------ computing
    @property
    def logmel(self) -> LogMel:
        if self._logmel is None:
            self._logmel = (
                LogMel(self.features, self.audio.sample_rate, stft=self.stft).to(self.device).eval()
            )
        return self._logmel

    def _compute(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Log-mels of equal-length waveforms, one batch."""
        batch = torch.from_numpy(np.stack([np.asarray(w, dtype=np.float32) for w in waves]))
        with torch.inference_mode():
            out = self.logmel(batch.to(self.device)).to("cpu", torch.float32).numpy()
        return list(out)

    def _digest_all(self, paths: list[Path], threads: int) -> list[str]:
        if threads <= 1 or len(paths) < 2:
            return [self.content_key(p) for p in paths]
        # hashlib releases the GIL on large buffers: threads hash files in parallel.
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(self.content_key, paths))

    def _build_cpu(
        self, todo: list[tuple[str, Path]], workers: int, batch_size: int, bar: Any
    ) -> None:
        per_task = max(1, min(batch_size, -(-len(todo) // (4 * workers))))
        tasks = [todo[i : i + per_task] for i in range(0, len(todo), per_task)]
        _ = self.logmel  # build the module once, before the threads share it
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # new threads take this count on their first torch operation
        try:
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(self._compute_and_store, task) for task in tasks]
                try:
                    for future in as_completed(futures):
                        bar.update(future.result())
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
        finally:
            torch.set_num_threads(threads)

    def _compute_and_store(self, items: list[tuple[str, Path]]) -> int:
        groups: dict[int, list[tuple[str, Path, np.ndarray]]] = {}
        for digest, path in items:
            wave = load_audio(path, self.audio)
            groups.setdefault(len(wave), []).append((digest, path, wave))
        for group in groups.values():
            specs = self._compute([w for _, _, w in group])
            for (digest, path, _), spec in zip(group, specs, strict=True):
                self._store(digest, spec, path)
        return len(items)

    def _build_device(
        self, todo: list[tuple[str, Path]], workers: int, batch_size: int, bar: Any
    ) -> None:
        pending: dict[int, list[tuple[str, Path, np.ndarray]]] = {}
        buffered = 0

        def flush(length: int) -> None:
            nonlocal buffered
            group = pending.pop(length)
            buffered -= len(group)
            specs = self._compute([w for _, _, w in group])
            for (digest, path, _), spec in zip(group, specs, strict=True):
                self._store(digest, spec, path)
            bar.update(len(group))

        for digest, path, wave in _prefetch_audio(todo, self.audio, workers, 2 * batch_size):
            pending.setdefault(len(wave), []).append((digest, path, wave))
            buffered += 1
            if len(pending[len(wave)]) >= batch_size:
                flush(len(wave))
            elif buffered >= 2 * batch_size:  # many distinct lengths: bound the memory
                for length in list(pending):
                    flush(length)
        for length in list(pending):
            flush(length)


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _prefetch_audio(
    todo: list[tuple[str, Path]], audio: AudioConfig, threads: int, depth: int
) -> Iterator[tuple[str, Path, np.ndarray]]:
    """Decode clips in background threads, up to ``depth`` ahead of the consumer, in order.

    libsndfile and scipy's resampler release the GIL, so decoding overlaps the GPU's work.
    """
    with ThreadPoolExecutor(threads) as pool:
        queue: deque[tuple[str, Path, Future[np.ndarray]]] = deque()
        try:
            for digest, path in todo:
                queue.append((digest, path, pool.submit(load_audio, path, audio)))
                if len(queue) > depth:
                    d, p, f = queue.popleft()
                    yield d, p, f.result()
            while queue:
                d, p, f = queue.popleft()
                yield d, p, f.result()
        finally:
            for _, _, f in queue:
                f.cancel()


def _progress_bar(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="clip", leave=False)
