"""Training throughput of the full alternating step at batch 256, against naive eager PyTorch.

    python benchmarks/training.py                  # batch 256, 128 x 1024, appends to RESULTS.md
    python benchmarks/training.py --no-append --batch 16 --repeats 1

One *step* is Algorithm 1's pair of updates on one batch: the domain classifier on detached
latents (step 1), then the autoencoder on ``alpha * L_recon + L_SVDD + L_adv`` through the
gradient-reversal layer (step 2), with both AdamW optimizers stepping.  Half of each batch is
flagged pseudo-anomalous (the sampler's balance), so every loss term is live.

* ``naive eager fp32``: Algorithm 1 written the obvious way - step 1 runs its own encoder
  forward (``z = model.encode(x)``, autograd on) and the classifier on ``z.detach()``; step 2
  runs a second, full autoencoder forward; NCHW; ``torch.optim.AdamW`` defaults (foreach);
  PyTorch's default threads; fp32.
* ``harken train_step, NCHW``: :func:`harken.systems.cae_dann.loss.train_step` - one shared
  autoencoder forward for both steps (step 1 does not change the autoencoder, so its latents
  are the ones step 2 would recompute).
* ``+ channels-last``: the same with the model and inputs in channels-last layout
  (``train.channels_last``).
* ``+ retained memory`` (``train.retain_memory``, harken's default): glibc keeps freed memory
  for reuse (:func:`harken.speed.retain_freed_memory`), so the step's large activations stop
  page-faulting; process-wide, so this variant runs after the others.  The page faults and
  kernel time per step are reported for every variant.
* ``fused AdamW`` (``fused=True``) was measured too and did not pay (1.29x against 1.36x without
  it, RESULTS.md); the ``fused`` field of ``Variant`` keeps it one line away.
* ``bf16 autocast`` (``train.precision=bf16``): only where bf16 is native, or with ``--bf16``.
* ``torch.compile`` (``train.compile``): only with ``--compile``; compile time reported.

The ratio is naive time / variant time in the same run.  Data loading is not part of a step
(see ``benchmarks/epoch.py`` for a whole epoch from the feature cache).
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from common import append_results, best_time, bf16_note, load, machine, markdown_table, pick_device

from harken.complexity import cae_macs
from harken.config import LossConfig
from harken.speed import native_bf16, retain_freed_memory, set_threads
from harken.systems.cae_dann.loss import autoencoder_objective, train_step
from harken.systems.cae_dann.torch_model import CAEDANN, init_center


@dataclass
class Variant:
    name: str
    channels_last: bool = False
    fused: bool = False
    dtype: torch.dtype | None = None
    compile: bool = False
    naive: bool = False
    retain: bool = False


def naive_step(model: CAEDANN, x, domain, is_pseudo, lc: LossConfig, ae_opt, clf_opt) -> float:
    """Algorithm 1 literally: two separate forward passes, nothing shared, nothing fused."""
    # step 1: the domain classifier on (detached) latents of the current encoder
    z = model.encode(x)
    logits = model.domain_classifier(z.detach())
    d_loss = F.cross_entropy(logits, domain)
    clf_opt.zero_grad()
    d_loss.backward()
    clf_opt.step()
    # step 2: the autoencoder on Eq. 8, the adversarial term through the GRL
    z, x_hat = model.autoencoder(x)
    adv_logits = model.domain_logits(z, reverse=True)
    terms = autoencoder_objective(z, x, x_hat, model.center, is_pseudo, lc, adv_logits, domain)
    ae_opt.zero_grad()
    terms["loss"].backward()
    ae_opt.step()
    return float(terms["loss"].item())


def make_state(variant: Variant, n_mels: int, frames: int, device: torch.device, x: torch.Tensor):
    torch.manual_seed(0)
    model = CAEDANN(n_mels=n_mels, frames=frames).to(device)
    init_center(model, [x[: min(8, len(x))]])
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    kw = {"fused": True} if variant.fused else {}
    ae_opt = torch.optim.AdamW(model.autoencoder.parameters(), lr=1e-4, weight_decay=1e-5, **kw)
    clf_opt = torch.optim.AdamW(
        model.domain_classifier.parameters(), lr=1e-4, weight_decay=1e-5, **kw
    )
    model.train()
    return model, ae_opt, clf_opt


def time_variant(
    v: Variant,
    args: argparse.Namespace,
    x,
    domain,
    is_pseudo,
    lc: LossConfig,
    device: torch.device,
    notes: list[str],
) -> tuple[float, float, float]:
    """Seconds of one step of ``v`` (minimum over ``args.repeats`` after one warm-up step), and
    the page faults and kernel (system) seconds per step over those steps."""
    if v.retain and device.type == "cpu":
        retain_freed_memory()  # process-wide from here on: variants that retain memory run last
    model, ae_opt, clf_opt = make_state(v, args.n_mels, args.frames, device, x)
    xin = x.contiguous(memory_format=torch.channels_last) if v.channels_last else x
    if v.naive:

        def fn() -> object:
            return naive_step(model, xin, domain, is_pseudo, lc, ae_opt, clf_opt)
    else:
        ae = torch.compile(model.autoencoder) if v.compile else model.autoencoder

        def fn() -> object:
            return train_step(
                model,
                xin,
                domain,
                is_pseudo,
                lc,
                ae_opt,
                clf_opt,
                autocast_dtype=v.dtype,
                channels_last=v.channels_last,
                autoencoder=ae,
            )

        if v.compile:
            start = time.perf_counter()
            fn()
            notes.append(
                f"torch.compile: the first step (compilation included) took {time.perf_counter() - start:.1f} s"
            )
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = best_time(fn, repeats=args.repeats, warmup=1, device=device)
    after = resource.getrusage(resource.RUSAGE_SELF)
    steps = args.repeats + 1
    return (
        seconds,
        (after.ru_minflt - before.ru_minflt) / steps,
        (after.ru_stime - before.ru_stime) / steps,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--n-mels", type=int, default=128)
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed steps per variant (minimum reported)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--bf16", action="store_true", help="also time bf16 autocast where bf16 is emulated"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile (compile time reported)"
    )
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    device = pick_device(args.device)
    load_before = load()
    info = machine(device)
    print(info.line())
    print(f"load average {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}")

    gen = torch.Generator().manual_seed(0)
    b = args.batch
    x = torch.rand(b, 1, args.n_mels, args.frames, generator=gen).to(device)
    domain = (torch.arange(b) % 2).to(device)
    is_pseudo = ((torch.arange(b) // 2) % 2).bool().to(device)
    lc = LossConfig()
    flops_fwd = 2 * cae_macs(CAEDANN(n_mels=args.n_mels, frames=args.frames))["true"]

    variants = [
        Variant("naive eager fp32 (Algorithm 1, two forwards)", naive=True),
        Variant("harken train_step, NCHW"),
        Variant("harken train_step + channels-last", channels_last=True),
        Variant(
            "harken train_step + channels-last + retained memory (default)",
            channels_last=True,
            retain=True,
        ),
    ]
    if native_bf16(device) or args.bf16:
        variants.append(
            Variant(
                "+ bf16 autocast" + ("" if native_bf16(device) else " (emulated)"),
                channels_last=True,
                retain=True,
                dtype=torch.bfloat16,
            )
        )
    if args.compile:
        variants.append(Variant("+ torch.compile", channels_last=True, retain=True, compile=True))

    rows = []
    notes: list[str] = []
    naive_s = None
    for v in variants:
        seconds, faults, sys_s = time_variant(v, args, x, domain, is_pseudo, lc, device, notes)
        naive_s = seconds if naive_s is None else naive_s
        per_input = seconds / b
        rows.append(
            [
                v.name,
                b,
                seconds,
                per_input * 1e3,
                b / seconds,
                naive_s / seconds,
                f"{faults:,.0f}",
                sys_s,
            ]
        )
        print(
            f"  {v.name:62s} {seconds:7.2f} s/step  {per_input * 1e3:7.1f} ms/input  {b / seconds:6.2f} inputs/s  "
            f"x{naive_s / seconds:4.2f}  {faults:9,.0f} page faults/step  sys {sys_s:5.1f} s/step",
            flush=True,
        )
        gc.collect()

    for note in notes:
        print(f"  {note}")
    load_after = load()
    table = markdown_table(
        [
            "variant",
            "batch",
            "s / step",
            "ms / input",
            "inputs / s",
            "x naive eager",
            "page faults / step",
            "kernel s / step",
        ],
        rows,
    )
    print(table)
    body = (
        f"One step = domain-classifier update + autoencoder update (all losses), {args.n_mels} x {args.frames} inputs, "
        f"batch {b}, half of it pseudo-anomalous.  For scale: one autoencoder forward is {flops_fwd / 1e9:.3f} GFLOP per input.  "
        f"{bf16_note(device)}.  Times are the minimum of {args.repeats} steps after one warm-up step.\n\n"
        + (("\n".join(f"* {n}" for n in notes) + "\n\n") if notes else "")
        + table
    )
    if not args.no_append:
        append_results(
            "Training step throughput (benchmarks/training.py)", body, info, load_before, load_after
        )
        print("appended to benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
