"""Shared pieces of the speed benchmarks: machine description, GEMM rate, timing, RESULTS.md.

Each benchmark script imports this module from its own folder (``python benchmarks/X.py``
puts ``benchmarks/`` on ``sys.path``).  Timings are the *minimum* over repeats (the
``timeit`` convention: on a shared machine other processes only ever add time), and every
section written to ``benchmarks/RESULTS.md`` records the load average before and after the
run, so contaminated figures can be recognised.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harken.speed import cpu_flags, cpu_model, native_bf16, usable_cores

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"


@dataclass
class Machine:
    cpu: str
    cores: int
    logical_cpus: int
    torch_threads: int
    torch_version: str
    cpu_capability: str
    native_bf16: bool
    device: str
    gpu: str | None
    python: str
    git: str

    def line(self) -> str:
        gpu = f"GPU used: {self.gpu}" if self.gpu else "GPU used: none"
        return (
            f"{self.cpu}; {self.cores} usable cores ({self.logical_cpus} logical CPUs on the host), "
            f"torch {self.torch_version} with {self.torch_threads} threads, "
            f"CPU kernels {self.cpu_capability}, native bf16: {'yes' if self.native_bf16 else 'no'}; "
            f"{gpu}; Python {self.python}; commit {self.git}"
        )


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def machine(device: torch.device) -> Machine:
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        capability = "unknown"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return Machine(
        cpu=cpu_model(),
        cores=usable_cores(),
        logical_cpus=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        torch_version=str(torch.__version__),
        cpu_capability=str(capability),
        native_bf16=native_bf16(device),
        device=str(device),
        gpu=gpu,
        python=platform.python_version(),
        git=_git_commit(),
    )


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("+dirty" if dirty.stdout.strip() else "")


def load() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(
    fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1, device: torch.device | None = None
) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    dev = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
        sync(dev)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(dev)
        best = min(best, time.perf_counter() - start)
    return best


def gemm_flops(
    device: torch.device, *, n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 5
) -> float:
    """Measured FLOP/s of an ``n x n`` by ``n x n`` matrix product (2 n^3 FLOPs) on ``device``."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    seconds = best_time(lambda: torch.mm(a, b, out=out), repeats=repeats, warmup=2, device=device)
    return 2.0 * n**3 / seconds


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def append_results(
    title: str, body: str, info: Machine, load_before: Sequence[float], load_after: Sequence[float]
) -> None:
    """Append one section to ``benchmarks/RESULTS.md`` (locked, so concurrent writers interleave whole sections)."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = (
        f"\n## {title} ({stamp})\n\n"
        f"Command: `{command_line()}`\n\n"
        f"Machine: {info.line()}\n\n"
        f"Load average (1/5/15 min) before: {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}, "
        f"after: {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} "
        f"(the machine has {info.cores} cores; above that, other processes shared them and times are inflated).\n\n"
        f"{body.rstrip()}\n"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if fh.tell() == 0:
                fh.write(
                    "# Benchmark results\n\nEach section is appended by the benchmark named in it.\n"
                )
            fh.write(text)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def bf16_note(device: torch.device) -> str:
    flags = sorted({"avx512_bf16", "amx_bf16", "amx_tile"} & cpu_flags())
    if device.type == "cuda":
        return "CUDA bf16 " + ("supported" if native_bf16(device) else "not supported")
    return "native bf16 CPU flags: " + (", ".join(flags) if flags else "none (bf16 is emulated)")
