"""Peak resident memory of training at batch 256 and of scoring, each measured in a fresh subprocess.

    python benchmarks/memory.py                   # appends to RESULTS.md
    python benchmarks/memory.py --batch 32 --no-append

Each measurement runs in its own ``python benchmarks/memory.py --child ...`` process so that
its peak is not mixed with another's; the child reports ``resource.getrusage(RUSAGE_SELF)
.ru_maxrss`` (the kernel's high-water mark of its resident set, which counts every page it
touched: Python, torch, the model, the optimizer state, activations and workspace) and its
resident set right after imports and model construction, for reference.

* ``train``: the full alternating step (:func:`harken.systems.cae_dann.loss.train_step`, both
  optimizers, all losses) at 128 x 1024 and ``--batch`` (256, the paper's), with harken's
  default speed settings (``TrainConfig``: channels-last, glibc keeping freed memory for
  reuse), three steps.
* ``train-naive``: the same with Algorithm 1's two separate forwards, NCHW (for comparison).
* ``score``: ``--clips`` ten-second clips (1026 frames, windows of 1024 every 512) through
  :func:`harken.scoring.score_spectrograms` with the default backend (``score.backend=auto``:
  ONNX Runtime on the CPU) and with the torch backend, batch 64 windows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import append_results, load, machine, markdown_table, pick_device


def _rss_now() -> int:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def child(kind: str, batch: int, clips: int) -> dict[str, float]:
    import numpy as np
    import torch

    from harken.config import LossConfig, ScoreConfig, TrainConfig, WindowConfig
    from harken.systems.cae_dann.loss import train_step
    from harken.systems.cae_dann.torch_model import CAEDANN, init_center

    start = time.perf_counter()
    torch.manual_seed(0)
    model = CAEDANN()
    x = torch.rand(batch, 1, 128, 1024)
    init_center(model, [x[:8]])
    out: dict[str, float] = {}
    if kind.startswith("train"):
        naive = kind == "train-naive"
        channels_last = TrainConfig().channels_last and not naive
        if TrainConfig().retain_memory and not naive:
            from harken.speed import retain_freed_memory

            retain_freed_memory()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        ae_opt = torch.optim.AdamW(model.autoencoder.parameters(), lr=1e-4)
        clf_opt = torch.optim.AdamW(model.domain_classifier.parameters(), lr=1e-4)
        domain = torch.arange(batch) % 2
        pseudo = ((torch.arange(batch) // 2) % 2).bool()
        out["baseline"] = _rss_now()
        lc = LossConfig()
        model.train()
        for _ in range(3):
            if naive:
                sys.path.insert(0, str(Path(__file__).parent))
                from training import naive_step

                naive_step(model, x, domain, pseudo, lc, ae_opt, clf_opt)
            else:
                train_step(
                    model, x, domain, pseudo, lc, ae_opt, clf_opt, channels_last=channels_last
                )
    else:
        from harken.features.scaling import Scaler
        from harken.scoring import score_spectrograms
        from harken.training.loop import window_scorer

        rng = np.random.default_rng(0)
        specs = [rng.normal(-40, 12, size=(128, 1026)).astype(np.float32) for _ in range(clips)]
        scaler = Scaler.fit(
            specs[:4], __import__("harken.config", fromlist=["ScalingConfig"]).ScalingConfig()
        )
        backend = "torch" if kind == "score-torch" else ScoreConfig().backend
        scorer = window_scorer(model.eval(), scaler, backend=backend)
        out["baseline"] = _rss_now()
        score_spectrograms(specs, scorer, WindowConfig(frames=1024, test_hop=512), batch_size=64)
    out["peak"] = _peak()
    out["seconds"] = time.perf_counter() - start
    return out


def run_child(kind: str, batch: int, clips: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", kind, "--batch", str(batch), "--clips", str(clips)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--clips", type=int, default=64, help="ten-second clips to score")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--skip-naive", action="store_true", help="do not measure the naive training step"
    )
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.clips)))
        return 0

    device = pick_device("cpu")
    load_before = load()
    info = machine(device)
    print(info.line())
    kinds = [("train", f"training step, batch {args.batch}, harken defaults")]
    if not args.skip_naive:
        kinds.append(
            ("train-naive", f"training step, batch {args.batch}, naive (two forwards, NCHW)")
        )
    kinds += [
        ("score", f"scoring {args.clips} ten-second clips, default backend (ONNX Runtime on CPU)"),
        ("score-torch", f"scoring {args.clips} ten-second clips, torch backend"),
    ]
    rows = []
    for kind, label in kinds:
        r = run_child(kind, args.batch, args.clips)
        rows.append([label, r["peak"] / 2**30, r["baseline"] / 2**30, r["seconds"]])
        print(
            f"  {label:70s} peak {r['peak'] / 2**30:6.2f} GiB (after set-up {r['baseline'] / 2**30:5.2f} GiB)",
            flush=True,
        )
    load_after = load()
    table = markdown_table(
        ["process", "peak RSS (GiB)", "RSS after imports + set-up (GiB)", "seconds"], rows
    )
    print(table)
    body = (
        "Peak resident set (`ru_maxrss`) of a fresh process doing only the named work, CPU, fp32, 128 x 1024 inputs; "
        "the model has 17.04 M parameters (68 MB) and AdamW keeps two more copies.\n\n" + table
    )
    if not args.no_append:
        append_results("Peak memory (benchmarks/memory.py)", body, info, load_before, load_after)
        print("appended to benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
