"""Load benchmark of ``harken serve``: clips/second and latency at several concurrency levels.

    python benchmarks/serve_load.py [--run RUN] [--concurrency 1,4,16] [--requests 48]
                                    [--append benchmarks/RESULTS.md]

Starts real ``harken serve`` processes on 127.0.0.1 (one with request batching, one with
``--max-batch 1`` for comparison), uploads the same 10-s WAV from N client threads (each with
its own keep-alive connection) and reports, per level: throughput (requests completed /
wall time), p50 and p99 latency (client-side, whole request), and the mean number of clips
scored per model call (from ``/health``).  Without ``--run`` it trains a throw-away run with
the bundled ``demo`` config (1 epoch: training length does not change inference cost) on a
small synthetic set.  The clients run in this process and the server in another, so client
overhead does not hold the server's GIL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe(run: Path) -> str:
    """The served model in a few words, from the run's stored config."""
    from harken.api import load_run

    config = load_run(run).config
    w = config.window
    return (
        f"{config.system} ({config.train.setting}), {config.features.n_mels} x {w.frames} windows every "
        f"{w.test_hop} frames, channels {config.model.channels}, scored on CPU"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_run(work: Path) -> Path:
    """A demo-config run trained for one short epoch on a small synthetic set."""
    from harken.config import load_config
    from harken.data.synth import synthesize
    from harken.pipeline import discover_clips, train_run

    data = synthesize(work / "data", machines=("fan",), n_train_source=8, n_train_target=2, n_test=1, duration=10.0, progress=False)
    config = load_config("demo", ["train.epochs=1", "train.epoch_size=64"])
    os.environ.setdefault("HARKEN_CACHE_DIR", str(work / "cache"))
    train_run(config, discover_clips(data), work / "run", progress=False)
    return work / "run"


def start_server(run: Path, port: int, max_batch: int, max_wait_ms: float) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "harken", "serve", "--run", str(run), "--port", str(port),
        "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not come up")


def load(base: str, payload: bytes, concurrency: int, requests: int) -> dict[str, float]:
    """``requests`` uploads spread over ``concurrency`` threads; latency per request in ms."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    health0 = httpx.get(f"{base}/health").json()

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=600) as client:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                t0 = time.perf_counter()
                r = client.post("/score", files={"file": ("clip.wav", payload, "audio/wav")}, data={"machine": "fan"})
                r.raise_for_status()
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1000.0)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    health1 = httpx.get(f"{base}/health").json()
    latencies.sort()
    batches = max(1, health1["batches"] - health0["batches"])
    return {
        "clips_per_s": len(latencies) / wall,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))],
        "mean_batch": len(latencies) / batches,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="run to serve (default: train a tiny demo-config run)")
    parser.add_argument("--clip", type=Path, default=None, help="WAV to upload (default: a 10-s synthetic fan clip)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=48, help="requests per level (after 4 warm-up requests)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--no-unbatched", action="store_true", help="skip the --max-batch 1 comparison server")
    parser.add_argument("--append", type=Path, default=None, help="append the table to this Markdown file")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="harken-serve-bench-") as tmp:
        work = Path(tmp)
        run = args.run or tiny_run(work)
        model_text = describe(run)
        if args.clip is not None:
            payload = args.clip.read_bytes()
        else:
            from harken.data.synth import render_clip, wav_bytes

            audio, _ = render_clip("fan", duration=10.0, rng=0)
            payload = wav_bytes(audio, 16000)
        load_before = os.getloadavg()
        servers = [("batched", args.max_batch)] + ([] if args.no_unbatched else [("unbatched", 1)])
        rows = []
        for label, max_batch in servers:
            port = free_port()
            proc = start_server(run, port, max_batch, args.max_wait_ms)
            base = f"http://127.0.0.1:{port}"
            try:
                load(base, payload, 1, 4)  # warm-up
                for c in levels:
                    result = load(base, payload, c, args.requests)
                    rows.append((label, max_batch, c, result))
                    print(
                        f"{label:9s} max_batch={max_batch:<3d} concurrency={c:<3d} {result['clips_per_s']:6.2f} clips/s  "
                        f"p50 {result['p50']:8.1f} ms  p99 {result['p99']:8.1f} ms  mean batch {result['mean_batch']:.1f}",
                        flush=True,
                    )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        load_after = os.getloadavg()

    import torch

    import harken

    lines = [
        "",
        f"## harken serve load ({dt.date.today().isoformat()}, benchmarks/serve_load.py)",
        "",
        f"Machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} intra-op threads); "
        f"harken {harken.__version__}; Python {platform.python_version()}.",
        f"Load average (1/5/15 min) before: {' / '.join(f'{v:.2f}' for v in load_before)}, after: "
        f"{' / '.join(f'{v:.2f}' for v in load_after)}" + (" (above the core count: other processes shared the cores)." if load_before[0] > (os.cpu_count() or 1) else "."),
        f"Model: {model_text}; "
        f"upload: one 10-s 16-kHz 16-bit WAV ({len(payload) // 1024} KiB), {args.requests} requests per level, "
        f"client and server on 127.0.0.1 (server in its own process), --max-wait-ms {args.max_wait_ms:g}.",
        "",
        "| server | concurrency | clips/s | p50 latency (ms) | p99 latency (ms) | clips per model call |",
        "|---|---|---|---|---|---|",
    ]
    for label, max_batch, c, r in rows:
        lines.append(
            f"| {label} (max batch {max_batch}) | {c} | {r['clips_per_s']:.2f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['mean_batch']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append is not None:
        with open(args.append, "a", encoding="utf-8") as fh:  # a small append: others add sections too
            fh.write(text)
        print(f"appended to {args.append}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
