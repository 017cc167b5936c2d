"""Log-mel throughput (torch vs librosa) and feature-cache size/speed; appends to RESULTS.md.

    .venv/bin/python benchmarks/features.py            # full run, appends a section
    .venv/bin/python benchmarks/features.py --quick    # fewer repeats and clips, prints only

Clips: 16 ten-second single-channel signals cut from the real MIMII fan recordings in
``shared/audio`` (4 files x 8 microphones), identical for every implementation.  Times are the
minimum over repeats after one warm-up call (the ``timeit`` convention: on a shared machine
other processes only add time); the median is printed too, with the load average, so a
contaminated run shows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from harken.config import AudioConfig, FeatureConfig
from harken.features.cache import FeatureCache
from harken.features.logmel import LogMel

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SHARED = REPO.parent / "shared" / "audio" / "mimii_fan_id_00"
SR = 16000
DCASE_CLIPS = 8400


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def real_clips(n: int) -> np.ndarray:
    """``[n, 160000]`` float32: channels of the MIMII recordings, repeated if n > 32."""
    signals = []
    for path in sorted(SHARED.rglob("*.wav")):
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        assert sr == SR, path
        signals.extend(np.ascontiguousarray(data[: 10 * SR, c]) for c in range(data.shape[1]))
    if not signals:
        raise SystemExit(f"no audio under {SHARED}")
    return np.stack([signals[i % len(signals)] for i in range(n)])


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """(min wall, median wall, min process CPU) seconds of ``fn()`` over ``repeats`` calls,
    after one warm-up call.

    Process CPU time (all threads, user + system) is the work done; unlike wall time it barely
    moves when other processes share the cores, except for threads spinning at barriers.
    """
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        r0, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return min(walls), statistics.median(walls), min(cpus)


def librosa_fns(clips: np.ndarray, f: FeatureConfig) -> dict[str, Callable[[], object]]:
    import librosa

    kwargs = dict(
        sr=SR,
        n_fft=f.n_fft,
        hop_length=f.hop_length,
        win_length=f.win_length,
        window="hann",
        center=True,
        pad_mode="constant",
        power=f.power,
        n_mels=f.n_mels,
        fmin=f.f_min,
        fmax=f.f_max,
        htk=False,
        norm="slaney",
    )

    def per_clip() -> None:
        for y in clips:
            librosa.power_to_db(
                librosa.feature.melspectrogram(y=y, **kwargs), ref=1.0, amin=f.amin, top_db=None
            )

    def batched() -> None:  # librosa >= 0.10 takes [..., T]
        librosa.power_to_db(
            librosa.feature.melspectrogram(y=clips, **kwargs), ref=1.0, amin=f.amin, top_db=None
        )

    def threads() -> None:  # two clips at a time, like the cache's build
        with ThreadPoolExecutor(2) as pool:
            list(
                pool.map(
                    lambda y: librosa.power_to_db(
                        librosa.feature.melspectrogram(y=y, **kwargs),
                        ref=1.0,
                        amin=f.amin,
                        top_db=None,
                    ),
                    clips,
                )
            )

    return {
        "librosa, clip by clip": per_clip,
        f"librosa, one [{len(clips)}, T] call": batched,
        "librosa, 2 threads, clip by clip": threads,
    }


def logmel_table(
    clips: np.ndarray, repeats: int, device: torch.device
) -> tuple[list[tuple[str, float, float]], float]:
    f = FeatureConfig()
    n = len(clips)
    rows: list[tuple[str, float, float, float]] = []
    for name, fn in librosa_fns(clips, f).items():
        best, med, cpu = timed(fn, repeats)
        rows.append((name, n / best, n / med, 1000 * cpu / n))
    librosa_best = max(r[1] for r in rows)

    x = torch.from_numpy(clips)
    fft, conv = LogMel(f, SR, stft="fft").eval(), LogMel(f, SR, stft="conv").eval()

    def run(
        fn: Callable[[torch.Tensor], torch.Tensor], threads: int | None = None
    ) -> Callable[[], object]:
        def go() -> None:
            old = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            try:
                with torch.inference_mode():
                    fn(x)
            finally:
                torch.set_num_threads(old)

        return go

    def data_parallel(b: torch.Tensor) -> None:
        # The cache's CPU build: 2 Python threads, torch single-threaded, half the batch each.
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(fft, b.chunk(2)))

    variants = {
        f"torch stft='fft' (default), batch {n}, torch's {torch.get_num_threads()} intra-op threads": run(
            fft
        ),
        f"torch stft='fft', batch {n}, 1 thread": run(fft, threads=1),
        f"torch stft='fft' via torch.stft (the autograd/GPU/export path), batch {n}, 1 thread": run(
            fft._logmel, threads=1
        ),
        f"torch stft='conv', batch {n}, 1 thread": run(conv, threads=1),
        f"torch stft='fft', 2 threads x batch {n // 2}, torch single-threaded (the cache's build)": run(
            data_parallel, threads=1
        ),
    }
    for name, fn in variants.items():
        best, med, cpu = timed(fn, repeats)
        rows.append((name, n / best, n / med, 1000 * cpu / n))
    if device.type == "cuda":
        gpu = LogMel(f, SR).to(device).eval()
        xg = x.to(device)

        def on_gpu() -> None:
            with torch.inference_mode():
                gpu(xg)
            torch.cuda.synchronize(device)

        best, med = timed(on_gpu, repeats)
        rows.append(
            (f"torch on {torch.cuda.get_device_name(device)}, batch {n}", n / best, n / med)
        )
    return rows, librosa_best


def write_wavs(folder: Path, clips: np.ndarray, count: int) -> list[Path]:
    """``count`` distinct 16-bit mono 10-s WAVs (DCASE's format) from the real clips."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        y = np.roll(clips[i % len(clips)], int(rng.integers(0, 10 * SR))) * rng.uniform(0.5, 1.0)
        path = folder / f"section_00_source_train_normal_{i:04d}.wav"
        sf.write(path, y, SR, subtype="PCM_16")
        paths.append(path)
    return paths


def cache_table(clips: np.ndarray, count: int) -> tuple[list[tuple[str, str]], dict[str, float]]:
    rows: list[tuple[str, str]] = []
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="harken-bench-") as tmp:
        audio_dir = Path(tmp) / "audio"
        audio_dir.mkdir()
        paths = write_wavs(audio_dir, clips, count)
        for workers in (0, 1):
            root = Path(tmp) / f"cache{workers}"
            cache = FeatureCache(root, AudioConfig(), FeatureConfig())
            start = time.perf_counter()
            cache.build(paths, workers=workers, progress=False)
            seconds = time.perf_counter() - start
            figures[f"build{workers}"] = count / seconds
            rows.append(
                (
                    f"build {count} clips from empty, workers={workers}",
                    f"{count / seconds:.1f} clips/s ({seconds:.1f} s)",
                )
            )
            if workers == 0:
                hit = FeatureCache(root, AudioConfig(), FeatureConfig())  # fresh: hashes every file
                start = time.perf_counter()
                hit.build(paths, progress=False)
                seconds = time.perf_counter() - start
                rows.append(
                    (
                        f"build {count} clips, all cached (new instance: hash + validate)",
                        f"{count / seconds:.0f} clips/s",
                    )
                )
                per_entry = cache.entry_path(paths[0]).stat().st_size
                measured = cache.size_bytes()  # includes config.json
                figures["entry_bytes"] = per_entry
                figures["measured_per_clip"] = measured / count
                rows.append(
                    ("one 10-s entry (128 x 1026 float16 + .npy header)", f"{per_entry:,} bytes")
                )
                rows.append(
                    (
                        f"measured size of {count} entries (size_bytes())",
                        f"{measured:,} bytes = {measured / count:,.0f} per clip",
                    )
                )
                rows.append(
                    (
                        f"DCASE scale: {DCASE_CLIPS:,} clips x one entry",
                        f"{per_entry * DCASE_CLIPS / 1e9:.2f} GB",
                    )
                )
                rows.append(
                    (
                        f"DCASE scale from the measured {count}",
                        f"{measured / count * DCASE_CLIPS / 1e9:.2f} GB",
                    )
                )
            shutil.rmtree(root)
    return rows, figures


def table(headers: list[str], rows: list[tuple[object, ...]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def append_results(text: str) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # benchmarks of other modules append here too
        try:
            if fh.tell() == 0:
                fh.write(
                    "# Benchmark results\n\nEach section is appended by the benchmark named in it.\n"
                )
            fh.write(text)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 repeats, 40 cache clips, print only"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cache-clips", type=int, default=300)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (the GPU row only)")
    args = parser.parse_args()
    repeats, count = (3, 40) if args.quick else (args.repeats, args.cache_clips)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )

    load_before = os.getloadavg()
    clips = real_clips(16)
    rows, librosa_best = logmel_table(clips, repeats, device)
    torch_rows = [r for r in rows if r[0].startswith("torch")]
    default, best_torch = torch_rows[0], max(torch_rows, key=lambda r: r[1])
    cache_rows, figures = cache_table(clips, count)
    load_after = os.getloadavg()

    machine = (
        f"{cpu_model()}; {cores()} cores; torch {torch.__version__} ({torch.get_num_threads()} intra-op threads); "
        f"GPU used: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'none'}; "
        f"Python {platform.python_version()}; commit {git_commit()}"
    )
    f = FeatureConfig()
    body = [
        f"\n## Features: log-mel throughput and feature cache ({dt.datetime.now():%Y-%m-%d %H:%M})\n",
        f"Command: `.venv/bin/python benchmarks/features.py{' --quick' if args.quick else ''}`\n",
        f"Machine: {machine}\n",
        f"Load average (1/5/15 min) before: {' / '.join(f'{v:.2f}' for v in load_before)}, after: "
        f"{' / '.join(f'{v:.2f}' for v in load_after)} (above {cores()}, other processes shared the cores).\n",
        f"Log-mel of 16 real 10-s clips (MIMII fan channels), n_fft {f.n_fft}, hop {f.hop_length}, {f.n_mels} mels, "
        f"16 kHz, float32 in and out; best and median of {repeats} warm runs:\n",
        table(
            [
                "implementation",
                "clips/s (best)",
                "clips/s (median)",
                "x best librosa",
                "CPU ms per clip",
            ],
            [
                (name, f"{b:.1f}", f"{m:.1f}", f"{b / librosa_best:.2f}", f"{c:.1f}")
                for name, b, m, c in rows
            ],
        ),
        f"\nBest torch ({best_torch[0]}) vs best librosa: **{best_torch[1] / librosa_best:.2f}x**; "
        f"default settings: {default[1] / librosa_best:.2f}x (target: 3x).  CPU work per clip: best librosa "
        f"{min(r[3] for r in rows if not r[0].startswith('torch')):.1f} ms, torch single-threaded "
        f"{min(r[3] for r in torch_rows):.1f} ms.\n",
        f"Feature cache ({count} distinct 16-bit mono 10-s WAVs, default configuration, entries fsynced):\n",
        table(["what", "figure"], cache_rows),
        "",
    ]
    text = "\n".join(body)
    print(text)
    print(asdict(f))
    if not args.quick:
        append_results(text)
        print(f"appended to {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
