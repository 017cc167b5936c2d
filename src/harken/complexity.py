"""Parameter and multiply-accumulate (MAC) counts of the CAE, two conventions side by side.

The report (Section 4.3) gives 17.04 M parameters and "approximately 0.61 GMACs" for a
128 x 1024 input.  The parameter count is reproduced exactly by the autoencoder alone
(17,037,761 with conv biases and BatchNorm affine parameters; the domain classifier adds
8,514 and is training-only).  The MAC figure is not the true count:

* ``true`` - multiply-accumulates actually performed.  A conv costs
  ``output positions x C_in x C_out x k^2``; a stride-2 *transposed* conv costs
  ``input positions x C_in x C_out x k^2`` (each input pixel scatters one ``k x k`` kernel
  per output channel; the zeros a "dilate then convolve" view inserts are never multiplied).
  This is what ``torch.utils.flop_counter`` measures (FLOPs / 2): 0.2527 G.
* ``report`` - the same, but each transposed conv counted by its *output* positions as if it
  were an ordinary conv producing that output (what several per-layer profilers do): four
  times the true cost of each stride-2 deconv, 0.6066 G, the report's "0.61 GMACs".

Linear layers count ``in x out``; BatchNorm, ReLU, Sigmoid and bias additions are not
counted (both conventions; they would add < 0.01 G).  Importable without PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def parameter_count(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _architecture(model_or_config: Any) -> tuple[list[int], int, int, int | None, int | None]:
    """(channels, latent_dim, in_channels, n_mels, frames) of a model or a ``ModelConfig``."""
    ae = getattr(model_or_config, "autoencoder", model_or_config)
    if hasattr(ae, "bottleneck_shape"):  # a ConvAutoencoder
        return (
            list(ae.channels),
            int(ae.latent_dim),
            int(ae.in_channels),
            int(ae.n_mels),
            int(ae.frames),
        )
    if hasattr(model_or_config, "channels") and hasattr(model_or_config, "latent_dim"):
        return list(model_or_config.channels), int(model_or_config.latent_dim), 1, None, None
    raise TypeError(
        f"expected a CAEDANN, ConvAutoencoder or ModelConfig, got {type(model_or_config).__name__}"
    )


def cae_macs(
    model_or_config: Any, n_mels: int | None = None, frames: int | None = None
) -> dict[str, int]:
    """MACs of one autoencoder forward (encoder + decoder) on an ``n_mels x frames`` input.

    Returns ``report`` and ``true`` (see the module docstring) and the parts they are made of:
    ``conv``, ``linear``, ``deconv_true``, ``deconv_report``.  For a model the input size
    defaults to (and must equal) the one it was built for; for a ``ModelConfig`` it defaults
    to the report's 128 x 1024.
    """
    channels, latent, c_in, built_h, built_w = _architecture(model_or_config)
    h = n_mels if n_mels is not None else (built_h if built_h is not None else 128)
    w = frames if frames is not None else (built_w if built_w is not None else 1024)
    if built_h is not None and (h, w) != (built_h, built_w):
        raise ValueError(f"model was built for {built_h} x {built_w} inputs, not {h} x {w}")
    factor = 2 ** len(channels)
    if h % factor or w % factor:
        raise ValueError(f"input size {h} x {w} must be a multiple of {factor}")
    k2 = 9
    widths = [c_in, *channels]
    conv = 0
    for i in range(len(channels)):
        out_positions = (h >> (i + 1)) * (w >> (i + 1))
        conv += out_positions * widths[i] * widths[i + 1] * k2
    flat = channels[-1] * (h // factor) * (w // factor)
    linear = 2 * flat * latent
    deconv_true = 0
    deconv_report = 0
    rev = widths[::-1]
    for i in range(len(channels)):
        scale = len(channels) - i  # input of deconv i is at 1 / 2**scale resolution
        in_positions = (h >> scale) * (w >> scale)
        out_positions = (h >> (scale - 1)) * (w >> (scale - 1))
        per_position = rev[i] * rev[i + 1] * k2
        deconv_true += in_positions * per_position
        deconv_report += out_positions * per_position
    return {
        "report": conv + linear + deconv_report,
        "true": conv + linear + deconv_true,
        "conv": conv,
        "linear": linear,
        "deconv_true": deconv_true,
        "deconv_report": deconv_report,
    }


def measured_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """True MACs of ``model(x)`` for one ``x`` of ``input_shape`` (including the batch dim),
    measured with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2), in eval mode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(*input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
