"""Inference throughput of the CAE scorer at 128 x 1024, against naive eager PyTorch and the GEMM rate.

    python benchmarks/inference.py                 # batches 1 and 64, appends to RESULTS.md
    python benchmarks/inference.py --no-append --batches 8 --repeats 2

Every variant maps the same dB windows ``[B, 128, 1024]`` to both scores (reconstruction error
and ``||z - c||^2``), scaling included, on one model with trained-looking BatchNorm statistics:

* ``naive eager fp32``: ``ScaledScorer(model, scaler).eval()`` called plainly - autograd on
  (no ``no_grad``/``inference_mode``), NCHW, PyTorch's default threads, BatchNorm as its own
  pass, fp32;
* ``torch no_grad``: harken's scoring before this work (eval mode under ``torch.no_grad``);
* ``torch fast`` (``score.backend=torch``): BatchNorm folded into the convolutions,
  channels-last, ``torch.inference_mode``;
* ``onnxruntime`` (``score.backend=onnxruntime``, the CPU default under ``auto``): the scorer
  exported to ONNX once (export time reported separately) and run by ONNX Runtime;
* ``torch fast bf16``: the fast path under bf16 autocast - run only where bf16 is native
  (AVX512-BF16/AMX CPUs, CUDA) or with ``--bf16``;
* ``torch.compile`` of the fast path: only with ``--compile`` (compile time reported).

Ratio (a) is naive time / variant time at the same batch.  Ratio (b) is the fraction of the
machine's fp32 matrix-product rate the variant achieves: 2 x true MACs (0.2527 G at 128 x 1024,
``harken.complexity``) / time per input / GEMM FLOP/s, the GEMM measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from common import (
    append_results,
    best_time,
    bf16_note,
    gemm_flops,
    load,
    machine,
    markdown_table,
    pick_device,
)

from harken.complexity import cae_macs
from harken.features.scaling import Scaler
from harken.scoring import score_spectrograms
from harken.speed import (
    OnnxRuntimeScorer,
    TorchScorer,
    native_bf16,
    onnxruntime_available,
    set_threads,
)
from harken.systems.cae_dann.torch_model import CAEDANN, CAEScorer, init_center
from harken.training.loop import ScaledScorer


def build_model(
    n_mels: int, frames: int, device: torch.device, seed: int = 0
) -> tuple[CAEDANN, Scaler]:
    """A CAE with non-trivial BatchNorm statistics and SVDD center, and a fitted scaler."""
    torch.manual_seed(seed)
    model = CAEDANN(n_mels=n_mels, frames=frames).to(device)
    rng = np.random.default_rng(seed)
    specs = [rng.normal(-40.0, 12.0, size=(n_mels, frames)).astype(np.float32) for _ in range(4)]
    scaler = Scaler.fit(specs, _scaling_config())
    x = scaler.transform(torch.from_numpy(np.stack(specs))).unsqueeze(1).to(device)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # move the BatchNorm running statistics off their defaults
            model.autoencoder(x)
    init_center(model, [x])
    return model.eval(), scaler


def _scaling_config():
    from harken.config import ScalingConfig

    return ScalingConfig()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--n-mels", type=int, default=128)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed calls per variant and batch (minimum reported)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch default)")
    parser.add_argument(
        "--bf16", action="store_true", help="also time bf16 autocast where bf16 is emulated"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile (compile time reported)"
    )
    parser.add_argument(
        "--no-append", action="store_true", help="print only; do not append to RESULTS.md"
    )
    args = parser.parse_args(argv)

    set_threads(args.threads)
    device = pick_device(args.device)
    load_before = load()
    info = machine(device)
    print(info.line())
    print(f"load average {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}")
    gemm = gemm_flops(device)
    print(f"fp32 GEMM 2048^3: {gemm / 1e9:.1f} GFLOP/s")

    model, scaler = build_model(args.n_mels, args.frames, device)
    flops = 2 * cae_macs(model)["true"]
    names = CAEScorer.output_names
    plain = ScaledScorer(model, scaler).to(device).eval()
    example = torch.zeros(1, args.n_mels, args.frames)

    def naive(x: torch.Tensor) -> object:
        return plain(x)

    def no_grad(x: torch.Tensor) -> object:
        with torch.no_grad():
            return plain(x)

    variants: list[tuple[str, Callable[[torch.Tensor], object]]] = [
        ("naive eager fp32", naive),
        ("torch no_grad (previous harken)", no_grad),
        (
            "torch fast (fold BN, channels-last, inference_mode)",
            TorchScorer(plain, names, device=device),
        ),
    ]
    setup_notes: list[str] = []
    if device.type == "cpu" and onnxruntime_available():
        start = time.perf_counter()
        ort_scorer = OnnxRuntimeScorer(plain, example, names)
        setup_notes.append(
            f"ONNX export + session creation: {time.perf_counter() - start:.1f} s (once per model)"
        )
        variants.append(("onnxruntime (default on CPU)", ort_scorer))
    if native_bf16(device) or args.bf16:
        label = "torch fast, bf16 decoder + fp32 encoder" + (
            "" if native_bf16(device) else " (emulated bf16)"
        )
        variants.append((label, TorchScorer(plain, names, device=device, dtype=torch.bfloat16)))
    if args.compile:
        fast = TorchScorer(plain, names, device=device)
        fast.module = torch.compile(fast.module)  # type: ignore[assignment]
        start = time.perf_counter()
        fast(torch.zeros(args.batches[0], args.n_mels, args.frames, device=device))
        setup_notes.append(
            f"torch.compile (first call, batch {args.batches[0]}): {time.perf_counter() - start:.1f} s"
        )
        variants.append(("torch.compile of torch fast", fast))

    gen = torch.Generator().manual_seed(1)
    rows = []
    for batch in args.batches:
        x = (torch.randn(batch, args.n_mels, args.frames, generator=gen) * 12.0 - 40.0).to(device)
        reference = None
        naive_s = None
        for name, fn in variants:
            seconds = (
                best_time(lambda fn=fn, x=x: fn(x), repeats=args.repeats, warmup=1, device=device)
                / batch
            )
            out = fn(x)
            recon = (
                (out["reconstruction"] if isinstance(out, dict) else out[0])
                .detach()
                .float()
                .cpu()
                .numpy()
            )
            if reference is None:
                reference, naive_s = recon, seconds
            rel = float(np.max(np.abs(recon - reference)) / (np.max(np.abs(reference)) + 1e-30))
            row = [
                name,
                batch,
                seconds * 1e3,
                1.0 / seconds,
                naive_s / seconds,
                100.0 * flops / seconds / gemm,
                f"{rel:.1e}",
            ]
            rows.append(row)
            print(
                f"  batch {batch:3d}  {name:55s} {seconds * 1e3:8.2f} ms/clip  {1 / seconds:7.2f} clips/s  "
                f"x{naive_s / seconds:5.2f} naive  {100 * flops / seconds / gemm:5.1f}% GEMM",
                flush=True,
            )

    # end to end through harken.scoring (windows cut from 10-s clips, batched across clips)
    clips = [
        np.asarray(r, dtype=np.float32)
        for r in np.random.default_rng(2).normal(-40, 12, size=(16, args.n_mels, 1026))
    ]
    from harken.config import WindowConfig

    window = WindowConfig(frames=args.frames, test_hop=args.frames // 2)
    e2e = []
    for name, fn in variants:
        if name.startswith(("naive", "torch no_grad")):
            continue
        seconds = best_time(
            lambda fn=fn: score_spectrograms(clips, fn, window, batch_size=64, device=device),
            repeats=max(1, args.repeats - 1),
        )
        e2e.append([name, len(clips), seconds * 1e3 / len(clips)])
        print(
            f"  end to end, {len(clips)} ten-second clips: {name:45s} {seconds * 1e3 / len(clips):8.2f} ms/clip"
        )
    for note in setup_notes:
        print(f"  {note}")

    load_after = load()
    headers = [
        "variant",
        "batch",
        "ms / clip",
        "clips / s",
        "x naive eager (a)",
        "% of fp32 GEMM (b)",
        "max rel. diff vs naive",
    ]
    table = markdown_table(headers, rows)
    print(table)
    body = (
        f"Model: CAE scorer at {args.n_mels} x {args.frames} (scaling + autoencoder + both scores), "
        f"{flops / 1e9:.3f} GFLOP per clip (2 x {flops / 2e9:.4f} G true MACs).  "
        f"fp32 GEMM (2048 x 2048 x 2048) measured in this run: {gemm / 1e9:.1f} GFLOP/s.  "
        f"{bf16_note(device)}.  Times are the minimum of {args.repeats} calls after one warm-up.\n\n"
        + (("\n".join(f"* {n}" for n in setup_notes) + "\n\n") if setup_notes else "")
        + table
        + "\n\nEnd to end through `harken.scoring.score_spectrograms` (16 ten-second clips of 1026 frames, "
        f"windows of {args.frames} every {args.frames // 2} frames, batched 64 across clips):\n\n"
        + markdown_table(["variant", "clips", "ms / clip"], e2e)
    )
    if not args.no_append:
        append_results(
            "Inference throughput (benchmarks/inference.py)", body, info, load_before, load_after
        )
        print("appended to benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
