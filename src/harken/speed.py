"""Speed options shared by training, scoring and the benchmarks (see ``docs/SPEED.md``).

* :func:`cpu_model`, :func:`cpu_flags`, :func:`native_bf16` - what the machine can do natively.
* :func:`autocast_dtype` - ``train.precision`` / ``score.precision`` (``auto``, ``fp32``,
  ``bf16``) resolved for a device.  ``auto`` is bf16 on CUDA devices with bf16 support and fp32
  everywhere else: on a CPU without AVX512-BF16/AMX, bf16 is emulated and several times slower.
* :func:`set_threads` - ``train.threads`` (0 keeps PyTorch's default, one thread per core).
* :func:`retain_freed_memory` - ``train.retain_memory``: glibc keeps freed memory for reuse,
  which removes the page faults of large per-step allocations on CPU.
* :func:`fold_batchnorm` - an eval-mode copy of a module with every ``Conv2d``/``ConvTranspose2d``
  followed by ``BatchNorm2d`` merged into one convolution (same function, fewer passes over
  memory).
* :func:`build_window_scorer` - the scoring fast path behind ``score.backend``:

  - ``torch``: BatchNorm folded, channels-last layout, ``torch.inference_mode``, optional
    autocast;
  - ``onnxruntime``: the scorer exported to ONNX in memory once per model and run by ONNX
    Runtime's CPU provider (its convolution kernels and graph fusions beat eager PyTorch on
    CPU, see ``benchmarks/RESULTS.md``);
  - ``auto``: ``onnxruntime`` on the CPU when the package is installed, ``torch`` otherwise
    (CUDA, or an install without the ``onnx``/``export`` extras).

Every path returns the same scores as the plain eval-mode module up to float32 rounding
(relative differences around 1e-6; ``tests/test_precision.py``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

WindowScorer = Callable[[Tensor], dict[str, Tensor]]
PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "torch", "onnxruntime")


# --------------------------------------------------------------------------- the machine
@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "unknown CPU", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "cpu model") and model == "unknown CPU":
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        import platform

        model = platform.processor() or model
    return model, flags


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none)."""
    return _cpuinfo()[1]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matrix products run natively (not emulated in fp32) on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and native_bf16(device) else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16}[precision]


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``device.type``, or a no-op for fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_retained = False


def retain_freed_memory() -> bool:
    """Keep freed memory in the process for reuse instead of returning it to the OS (glibc).

    By default glibc serves every allocation above 32 MB with a fresh ``mmap`` and unmaps it on
    ``free``: every large activation of every step then comes back as new pages, and the
    kernel's page faults (zero-filling 4 KB at a time) took 15-35% of a CPU training step here
    (hundreds of thousands of faults per step, ``benchmarks/training.py``).  With
    ``M_MMAP_MAX = 0`` and a high ``M_TRIM_THRESHOLD`` large blocks come from the heap and stay
    there, so from the second step on allocations reuse warm pages.  The price: the process's
    resident size stays at its peak until it exits.  Process-wide, idempotent; returns whether
    it applied (False on non-glibc systems).  ``train.retain_memory`` switches it.
    """
    global _retained
    if _retained:
        return True
    import ctypes
    import platform
    import sys

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (
            libc.mallopt(_M_MMAP_MAX, 0) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
        )
    except (OSError, AttributeError):
        return False
    _retained = bool(ok)
    return _retained


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` when ``threads > 0``; 0 keeps PyTorch's default."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- BatchNorm folding
def _fold_sequential(seq: nn.Sequential) -> None:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    names = list(seq._modules)
    i = 0
    while i < len(names) - 1:
        conv, bn = seq._modules[names[i]], seq._modules[names[i + 1]]
        if (
            isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
            and isinstance(bn, nn.BatchNorm2d)
            and bn.track_running_stats
        ):
            fused = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
            seq._modules[names[i]] = fused
            seq._modules[names[i + 1]] = nn.Identity()
            i += 2
        else:
            i += 1


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``module`` with Conv/ConvTranspose + BatchNorm2d pairs merged.

    Only pairs that are consecutive members of an ``nn.Sequential`` are folded (that is how
    the CAE is built); anything else is copied unchanged.  The result computes the same
    function as ``module.eval()`` up to float32 rounding and is for inference only.
    """
    out = copy.deepcopy(module).eval()
    for sub in list(out.modules()):
        if isinstance(sub, nn.Sequential):
            _fold_sequential(sub)
    return out


# --------------------------------------------------------------------------- window scorers
def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``auto`` -> ``onnxruntime`` on CPU when installed, else ``torch``."""
    if backend not in BACKENDS:
        raise ValueError(f"score backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return (
            "onnxruntime"
            if torch.device(device).type == "cpu" and onnxruntime_available()
            else "torch"
        )
    return backend


def _to_scores(names: tuple[str, ...], values: Any) -> dict[str, Tensor]:
    return dict(zip(names, values, strict=True))


class _Float32(nn.Module):
    """Runs ``inner`` in float32 inside an autocast region."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.inner(x.float())


def keep_fp32(module: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """Wrap (in place) every submodule whose attribute name is in ``names`` to run in float32
    under autocast."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in names and not isinstance(child, _Float32):
                setattr(parent, name, _Float32(child))
    return module


class TorchScorer:
    """The torch fast path: folded BatchNorm, channels-last, inference mode, optional autocast.

    Under reduced precision the submodules named in ``fp32_modules`` stay in float32: by
    default the CAE's ``encoder``, because the SVDD score ``||z - c||^2`` separates clips by
    latent differences that bf16 activations (8 significant bits) blur - fp32 vs bf16 score
    ranks then agreed only to Spearman 0.9988 on the synthetic test set, against 1.0 with the
    encoder in float32 (``tests/test_precision.py``).  The decoder, half the FLOPs, runs in
    bf16: the reconstruction error averages over every pixel and keeps its ranks.
    """

    def __init__(
        self,
        module: nn.Module,
        names: tuple[str, ...],
        *,
        device: torch.device,
        channels_last: bool = True,
        dtype: torch.dtype | None = None,
        fold_bn: bool = True,
        fp32_modules: tuple[str, ...] = ("encoder",),
    ) -> None:
        module = fold_batchnorm(module) if fold_bn else copy.deepcopy(module).eval()
        if dtype is not None and fp32_modules:
            keep_fp32(module, fp32_modules)
        self.module = module.to(device)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.names = names
        self.device = device
        self.channels_last = channels_last
        self.dtype = dtype

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        x = x.to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out = self.module(x)
        return _to_scores(self.names, [o.float() for o in out])


def export_onnx_bytes(module: nn.Module, example: Tensor, names: tuple[str, ...]) -> bytes:
    """``module`` (eval mode, CPU) as an in-memory ONNX model with a dynamic batch axis."""
    module = copy.deepcopy(module).cpu().eval()
    example = example.detach().cpu().float()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=["x"],
            output_names=list(names),
            dynamic_axes={"x": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


class OnnxRuntimeScorer:
    """The module exported to ONNX once and run by ONNX Runtime's CPU provider.

    The session uses as many intra-op threads as torch does (``torch.get_num_threads()``), so
    ``train.threads`` governs both.  Inputs and outputs stay float32.
    """

    def __init__(
        self,
        module: nn.Module,
        example: Tensor,
        names: tuple[str, ...],
        *,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.names = names
        self.model_bytes = export_onnx_bytes(module, example, names)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            self.model_bytes, options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        feed = {"x": x.detach().to("cpu", torch.float32).contiguous().numpy()}
        outputs = self.session.run(list(self.names), feed)
        return _to_scores(self.names, [torch.from_numpy(o) for o in outputs])


def build_window_scorer(
    module: nn.Module,
    names: tuple[str, ...],
    example: Tensor,
    *,
    device: torch.device | str = "cpu",
    backend: str = "auto",
    precision: str = "fp32",
    channels_last: bool = True,
) -> WindowScorer:
    """A window scorer for ``module`` (``x -> tuple of score tensors``, in eval mode).

    ``example`` is one input batch of the right shape (for the ONNX export).  The module itself
    is never modified: both backends work on a copy, so the caller's model keeps its training
    mode and its weights keep training.  Reduced ``precision`` needs the torch backend (ONNX
    Runtime runs the exported float32 graph), so ``auto`` picks torch when it is not fp32.
    """
    device = torch.device(device)
    dtype = autocast_dtype(precision, device)
    chosen = resolve_backend(backend, device)
    if chosen == "onnxruntime" and dtype is not None:
        if backend == "onnxruntime":
            raise ValueError(
                "score.backend=onnxruntime runs float32 only; use score.backend=torch for bf16"
            )
        chosen = "torch"
    if chosen == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f"score.backend=onnxruntime runs on the CPU, not {device}")
        try:
            return OnnxRuntimeScorer(module, example, names)
        except ImportError:
            if backend == "onnxruntime":
                raise
            log.info("ONNX export unavailable (install the 'export' extra); scoring with torch")
    return TorchScorer(module, names, device=device, channels_last=channels_last, dtype=dtype)
