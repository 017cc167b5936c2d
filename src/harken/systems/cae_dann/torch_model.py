"""The CAE-DANN-SVDD networks (report Sections 2.1-2.3).

* :class:`ConvAutoencoder` - four stride-2 conv blocks, a linear bottleneck to ``z`` and a
  mirrored decoder ending in a Sigmoid (inputs are scaled to [0, 1], see
  ``harken.features.scaling``).  At 128 x 1024 it has the report's 17.04 M parameters.
* :class:`GradientReversal` - identity forward, gradient times ``-lambda`` backward (Eq. 7).
* :class:`DomainClassifier` - Linear -> BN -> ReLU -> Dropout -> Linear (Eq. 6).
* :class:`CAEDANN` - the autoencoder and the classifier as *separate* submodules, because
  Algorithm 1 updates them with two optimizers, plus the fixed SVDD center ``c`` as a buffer.
* :class:`CAEScorer` - the inference graph (reconstruction error, Eq. 9, and ``||z - c||^2``)
  with no data-dependent Python control flow, so it traces and exports to ONNX as is.
  :class:`CAEResidualScorer` adds each window's residual statistics, from which the
  ``mahalanobis`` score is computed (:mod:`.mahalanobis`).

The center is a buffer, not a parameter: Deep SVDD keeps ``c`` fixed, otherwise the trivial
solution ``c = z`` for every input (hypersphere collapse) is reachable by gradient descent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from harken.config import ModelConfig


class GradientReversal(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``-lambd`` backward.

    Placed between the encoder and the domain classifier, one backward pass then trains the
    classifier to predict the domain while pushing the encoder to make domains
    indistinguishable (Ganin & Lempitsky's DANN).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, lambd: float) -> Tensor:
        ctx.lambd = float(lambd)
        # view_as: a new tensor node, so autograd calls our backward (returning x itself would
        # be treated as an input passed through and could alias in-place ops).
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * (-ctx.lambd), None


def grad_reverse(x: Tensor, lambd: float) -> Tensor:
    """Apply :class:`GradientReversal` with coefficient ``lambd``."""
    out = GradientReversal.apply(x, lambd)
    assert isinstance(out, Tensor)
    return out


class GradientReversalLayer(nn.Module):
    """Module form of :func:`grad_reverse`, for use inside ``nn.Sequential``."""

    def __init__(self, lambd: float) -> None:
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _deconv(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    # output_padding=1 makes each block exactly double H and W, mirroring the encoder
    # (stride-2 conv with padding 1 halves an even size exactly).
    return nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1, output_padding=1)


class ConvAutoencoder(nn.Module):
    """Symmetric convolutional autoencoder for fixed-size inputs ``[B, in_channels, n_mels, frames]``.

    The bottleneck is a dense layer over the whole final feature map (Eq. 2), so the input
    size is fixed at construction; ``n_mels`` and ``frames`` must be divisible by
    ``2 ** len(channels)`` (16 for the report's four blocks) for the decoder to mirror the
    encoder exactly.  Conv layers keep their biases although BatchNorm follows (PyTorch's
    default, and the report's 17.04 M count is reproduced with them).
    """

    def __init__(
        self,
        n_mels: int = 128,
        frames: int = 1024,
        channels: Sequence[int] = (16, 32, 64, 128),
        latent_dim: int = 128,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
        factor = 2 ** len(channels)
        if n_mels % factor or frames % factor or n_mels < factor or frames < factor:
            raise ValueError(
                f"input size {n_mels} x {frames} must be a positive multiple of {factor} "
                f"(2 ** number of conv blocks) so the decoder mirrors the encoder"
            )
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        self.n_mels = int(n_mels)
        self.frames = int(frames)
        self.channels = channels
        self.latent_dim = int(latent_dim)
        self.in_channels = int(in_channels)
        self.bottleneck_shape = (channels[-1], n_mels // factor, frames // factor)
        flat = channels[-1] * (n_mels // factor) * (frames // factor)

        widths = [in_channels, *channels]
        self.encoder = nn.Sequential(
            *[_conv_block(widths[i], widths[i + 1]) for i in range(len(channels))],
            nn.Flatten(1),
            nn.Linear(flat, latent_dim),
        )
        blocks: list[nn.Module] = [
            nn.Linear(latent_dim, flat),
            nn.Unflatten(1, self.bottleneck_shape),
        ]
        rev = widths[::-1]  # 128, 64, 32, 16, 1
        for i in range(len(channels)):
            blocks.append(_deconv(rev[i], rev[i + 1]))
            if i < len(channels) - 1:
                blocks += [nn.BatchNorm2d(rev[i + 1]), nn.ReLU(inplace=True)]
        blocks.append(nn.Sigmoid())
        self.decoder = nn.Sequential(*blocks)

    def encode(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> z [B, latent_dim]``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """``z [B, latent_dim] -> x_hat [B, C, H, W]`` in (0, 1)."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)


class DomainClassifier(nn.Module):
    """Eq. 6 without the GRL: ``W2 ReLU(BN(W1 z + b1)) + b2`` with dropout after the ReLU.

    The GRL is applied by the caller (:meth:`CAEDANN.domain_logits`), so step 1 of Algorithm
    1 can feed detached latents through the very same module.
    """

    def __init__(
        self, latent_dim: int = 128, hidden: int = 64, dropout: float = 0.5, n_domains: int = 2
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_domains),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class CAEDANN(nn.Module):
    """Autoencoder + domain classifier + fixed SVDD center.

    ``autoencoder`` and ``domain_classifier`` are separate submodules so each optimizer (and
    each DDP wrapper) takes exactly one of them.  ``center`` is a buffer that
    :func:`init_center` fills; it is all zeros until then (:meth:`has_center` tells), and a
    state dict carries it.
    """

    center: Tensor

    def __init__(
        self,
        n_mels: int = 128,
        frames: int = 1024,
        channels: Sequence[int] = (16, 32, 64, 128),
        latent_dim: int = 128,
        domain_hidden: int = 64,
        domain_dropout: float = 0.5,
        grl_lambda: float = 0.1,
        n_domains: int = 2,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.autoencoder = ConvAutoencoder(n_mels, frames, channels, latent_dim, in_channels)
        self.domain_classifier = DomainClassifier(
            latent_dim, domain_hidden, domain_dropout, n_domains
        )
        self.grl_lambda = float(grl_lambda)
        self.register_buffer("center", torch.zeros(latent_dim))

    @classmethod
    def from_config(
        cls, config: ModelConfig, n_mels: int, frames: int, n_domains: int = 2
    ) -> CAEDANN:
        """Build from the ``model`` config section for ``n_mels x frames`` inputs."""
        return cls(
            n_mels=n_mels,
            frames=frames,
            channels=config.channels,
            latent_dim=config.latent_dim,
            domain_hidden=config.domain_hidden,
            domain_dropout=config.domain_dropout,
            grl_lambda=config.grl_lambda,
            n_domains=n_domains,
        )

    @property
    def latent_dim(self) -> int:
        return self.autoencoder.latent_dim

    def encode(self, x: Tensor) -> Tensor:
        return self.autoencoder.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.autoencoder.decode(z)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, x_hat)``; the classifier is not run (it is training-only)."""
        return self.autoencoder(x)

    def domain_logits(self, z: Tensor, reverse: bool) -> Tensor:
        """Domain logits of ``z``; ``reverse=True`` inserts the GRL (step 2's adversarial term)."""
        if reverse:
            z = grad_reverse(z, self.grl_lambda)
        return self.domain_classifier(z)

    def has_center(self) -> bool:
        """Whether :func:`init_center` has run (a guarded center has no zero component)."""
        return bool(torch.all(self.center != 0).item())

    def scorer(self) -> CAEScorer:
        """The inference wrapper sharing this model's autoencoder and center."""
        return CAEScorer(self)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def guard_center(center: Tensor, eps: float) -> Tensor:
    """Push components with ``|c_j| < eps`` to ``sign(c_j) * eps`` (``0 -> +eps``).

    A component near zero lets a network with zero weights into that unit reach the center
    trivially (Ruff et al. 2018, Deep SVDD), so it is moved off zero, keeping its sign.
    """
    small = center.abs() < eps
    pushed = torch.where(center < 0, torch.full_like(center, -eps), torch.full_like(center, eps))
    return torch.where(small, pushed, center)


@torch.no_grad()
def init_center(
    model: CAEDANN,
    batches: Iterable[Tensor | Sequence[Tensor]],
    *,
    eps: float = 0.1,
    all_reduce: Callable[[Tensor], Tensor | None] | None = None,
) -> Tensor:
    """Set ``model.center`` to the guarded mean latent of normal inputs and return it.

    ``batches`` yields scaled normal inputs ``[B, 1, H, W]`` (or tuples whose first element
    is that tensor).  The forward pass runs in eval mode (BatchNorm with running statistics,
    no dropout) and the training mode is restored afterwards.  Sums are accumulated in
    float64 so a mean over thousands of clips does not lose precision.

    ``all_reduce`` makes the mean global under DDP: it receives one float64 tensor holding
    the local latent sum and count, and either sums it in place over ranks (like
    ``torch.distributed.all_reduce``) or returns the summed tensor.  Every rank then gets the
    same center.
    """
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros(model.latent_dim + 1, dtype=torch.float64, device=device)
        for batch in batches:
            x = batch if isinstance(batch, Tensor) else batch[0]
            z = model.encode(x.to(device=device, dtype=torch.float32))
            total[:-1] += z.double().sum(0)
            total[-1] += z.shape[0]
        if all_reduce is not None:
            reduced = all_reduce(total)
            if isinstance(reduced, Tensor):
                total = reduced
        count = float(total[-1].item())
        if count <= 0:
            raise ValueError("init_center: no inputs to compute the SVDD center from")
        center = guard_center(total[:-1] / count, float(eps))
        if not torch.isfinite(center).all():
            raise ValueError(
                "init_center: the mean latent is not finite (NaN/Inf in inputs or weights?)"
            )
        model.center.copy_(center.to(model.center.dtype))
    finally:
        model.train(was_training)
    return model.center.detach().clone()


def svdd_distance(z: Tensor, center: Tensor) -> Tensor:
    """``||z_i - c||^2`` per row, in float32 whatever the autocast dtype of ``z``."""
    return (z.float() - center.float()).pow(2).sum(dim=1)


def reconstruction_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """Eq. 9 per input: mean squared error over C * H * W, in float32."""
    return (x.float() - x_hat.float()).pow(2).flatten(1).mean(dim=1)


def residual_statistics(x: Tensor, x_hat: Tensor) -> Tensor:
    """Per mel band, the mean and the standard deviation over time of ``x - x_hat``.

    ``x [B, 1, H, W]`` -> ``[B, 2 * H]`` (means first), in float32.  The mean says which bands
    the clip holds more (or less) energy in than the autoencoder expects; the standard
    deviation catches impulsive or intermittent content (clicks, rattles) that leaves the
    band's mean almost unchanged.
    """
    r = (x.float() - x_hat.float()).flatten(1, 2)  # [B, C * H, W]
    return torch.cat([r.mean(dim=2), r.std(dim=2, unbiased=False)], dim=1)


class CAEScorer(nn.Module):
    """Inference graph: ``x [B, 1, H, W] -> (reconstruction [B], svdd [B])``.

    It wraps a :class:`CAEDANN` (no copy), reading the autoencoder and the center at call
    time, so it stays in sync with training, ``load_state_dict`` and ``.to(device)``.
    ``forward`` has no Python branch on data, so ``torch.onnx.export`` and
    ``torch.jit.trace`` capture it exactly (the unused domain classifier is dropped from the
    exported graph); put it in eval mode before export or scoring (:func:`score_inputs`
    does).  Output order is :attr:`output_names`.
    """

    output_names = ("reconstruction", "svdd")

    def __init__(self, model: CAEDANN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, x_hat = self.model.autoencoder(x)
        return reconstruction_error(x, x_hat), svdd_distance(z, self.model.center)


class CAEResidualScorer(CAEScorer):
    """:class:`CAEScorer` plus the residual statistics ``[B, 2 * H]`` of every input."""

    output_names = ("reconstruction", "svdd", "residual")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        z, x_hat = self.model.autoencoder(x)
        return (
            reconstruction_error(x, x_hat),
            svdd_distance(z, self.model.center),
            residual_statistics(x, x_hat),
        )


@torch.no_grad()
def score_inputs(model: CAEDANN | CAEScorer, x: Tensor) -> dict[str, Tensor]:
    """Both anomaly scores of scaled inputs ``[B, 1, H, W]`` in eval mode (mode restored)."""
    scorer = model if isinstance(model, CAEScorer) else CAEScorer(model)
    was_training = scorer.training
    scorer.eval()
    try:
        recon, svdd = scorer(x)
    finally:
        scorer.train(was_training)
    return {"reconstruction": recon, "svdd": svdd}
