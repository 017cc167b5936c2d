"""Objectives of CAE-DANN-SVDD and the two alternating update steps of Algorithm 1.

Losses are computed in float32 even under autocast (a bf16 sum of 256 squared distances loses
the small differences the SVDD term is made of).  Empty subsets (a batch without normals, or
without pseudo-anomalies) contribute exactly 0 through masked sums divided by
``max(count, 1)``: no NaN, and no data-dependent Python branch, so no GPU sync per step.

Step functions
--------------
:func:`classifier_step` (step 1) trains the domain classifier on *detached* latents;
:func:`autoencoder_step` (step 2) trains the autoencoder on Eq. 8, the adversarial term
reaching the encoder through the GRL.  :func:`train_step` runs both with a single
autoencoder forward: step 1 does not change the autoencoder, so its latents are the same ones
step 2 would recompute (the forward is deterministic in train mode: no dropout in the CAE),
and BatchNorm running statistics are updated once per batch rather than twice.

Under DDP pass the wrapped submodules as ``autoencoder=`` / ``classifier=`` (e.g.
``DDP(model.autoencoder)``): the steps call them, so DDP's gradient hooks fire.  Step 2's
backward also fills the classifier's ``.grad`` (the adversarial loss depends on it); those
gradients are never applied: step 2 steps only the autoencoder optimizer and step 1 zeroes
the classifier gradients before its own backward.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harken.config import LossConfig
from harken.systems.cae_dann.torch_model import (
    CAEDANN,
    grad_reverse,
    reconstruction_error,
    svdd_distance,
)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values[mask]``, 0 when the mask is empty (gradient flows, no sync)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _as_bool(is_anomaly: Tensor) -> Tensor:
    return is_anomaly.bool().reshape(-1)


def svdd_loss(z: Tensor, center: Tensor, is_anomaly: Tensor, nu: float = 3.0) -> Tensor:
    """Eq. 5: mean ``||z - c||^2`` over normals + mean ``max(0, nu - ||z - c||^2)`` over anomalies."""
    anomaly = _as_bool(is_anomaly)
    dist = svdd_distance(z, center)
    normal_term = _masked_mean(dist, ~anomaly)
    anomaly_term = _masked_mean(torch.clamp(nu - dist, min=0.0), anomaly)
    return normal_term + anomaly_term


def svdd_terms(z: Tensor, center: Tensor, is_anomaly: Tensor, nu: float = 3.0) -> dict[str, Tensor]:
    """The two halves of Eq. 5 separately (for logging), plus their sum under ``svdd``."""
    anomaly = _as_bool(is_anomaly)
    dist = svdd_distance(z, center)
    normal_term = _masked_mean(dist, ~anomaly)
    anomaly_term = _masked_mean(torch.clamp(nu - dist, min=0.0), anomaly)
    return {
        "svdd": normal_term + anomaly_term,
        "svdd_normal": normal_term,
        "svdd_anomaly": anomaly_term,
    }


def reconstruction_loss(x: Tensor, x_hat: Tensor, is_anomaly: Tensor) -> Tensor:
    """MSE over the normal inputs only (0 if there are none).

    Pseudo-anomalies are excluded: the autoencoder must *not* learn to reconstruct them, or
    the reconstruction score (Eq. 9) would stop separating them.  All inputs have the same
    size, so the mean of per-input MSEs equals the MSE over all normal elements.
    """
    return _masked_mean(reconstruction_error(x, x_hat), ~_as_bool(is_anomaly))


def domain_loss(logits: Tensor, domain: Tensor) -> Tensor:
    """Cross-entropy of domain logits ``[B, n_domains]`` against integer labels ``[B]``."""
    return F.cross_entropy(logits.float(), domain.long().reshape(-1))


def autoencoder_objective(
    z: Tensor,
    x: Tensor,
    x_hat: Tensor,
    center: Tensor,
    is_anomaly: Tensor,
    config: LossConfig,
    adv_logits: Tensor | None = None,
    domain: Tensor | None = None,
) -> dict[str, Tensor]:
    """Eq. 8 ``alpha * L_recon + L_SVDD + L_adv`` and every term, as tensors.

    ``adv_logits`` are the classifier's logits of ``GRL(z)``; they (and ``domain``) are only
    needed with ``config.use_dann``.  Disabled terms are reported as 0 and not added.  The
    returned ``loss`` is the one to backpropagate.
    """
    zero = z.new_zeros((), dtype=torch.float32)
    recon = reconstruction_loss(x, x_hat, is_anomaly)
    if config.use_svdd:
        svdd = svdd_terms(z, center, is_anomaly, config.svdd_nu)
    else:
        svdd = {"svdd": zero, "svdd_normal": zero, "svdd_anomaly": zero}
    if config.use_dann:
        if adv_logits is None or domain is None:
            raise ValueError("use_dann needs the adversarial logits and the domain labels")
        adv = domain_loss(adv_logits, domain)
    else:
        adv = zero
    total = config.alpha_recon * recon + svdd["svdd"] + adv
    return {"loss": total, "recon": recon, **svdd, "adv": adv}


# --------------------------------------------------------------------------- update steps


def prepare_input(
    x: Tensor, device: torch.device | None = None, channels_last: bool = False
) -> Tensor:
    """Float32 on ``device``, in channels-last layout if asked (the model must match:
    ``model.to(memory_format=torch.channels_last)``)."""
    x = x.to(
        device=device if device is not None else x.device, dtype=torch.float32, non_blocking=True
    )
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _floats(terms: dict[str, Tensor]) -> dict[str, float]:
    """One host transfer (one sync) for all logged values."""
    keys = list(terms)
    values = torch.stack([terms[k].detach().float().reshape(()) for k in keys]).tolist()
    return dict(zip(keys, values, strict=True))


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def classifier_step(
    model: CAEDANN,
    x: Tensor,
    domain: Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    z: Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    autoencoder: nn.Module | None = None,
    classifier: nn.Module | None = None,
) -> dict[str, float]:
    """Step 1 of Algorithm 1: one update of the domain classifier on detached latents.

    ``optimizer`` must hold the classifier's parameters only.  ``z`` may be given (latents of
    ``x`` from the current autoencoder); otherwise they are computed without a graph.
    Returns ``{"domain_loss", "domain_acc"}``.
    """
    autoencoder = model.autoencoder if autoencoder is None else autoencoder
    classifier = model.domain_classifier if classifier is None else classifier
    device = _device(model)
    domain = domain.to(device, non_blocking=True).long().reshape(-1)
    if z is None:
        x = prepare_input(x, device, channels_last)
        with torch.no_grad(), _autocast(device, autocast_dtype):
            z, _ = autoencoder(x)
    optimizer.zero_grad(set_to_none=True)
    with _autocast(device, autocast_dtype):
        logits = classifier(z.detach())
    loss = domain_loss(logits, domain)
    loss.backward()
    optimizer.step()
    acc = (logits.detach().argmax(dim=1) == domain).float().mean()
    return _floats({"domain_loss": loss, "domain_acc": acc})


def _autoencoder_update(
    model: CAEDANN,
    z: Tensor,
    x: Tensor,
    x_hat: Tensor,
    domain: Tensor,
    is_anomaly: Tensor,
    config: LossConfig,
    optimizer: torch.optim.Optimizer,
    autocast_dtype: torch.dtype | None,
    classifier: nn.Module,
) -> dict[str, Tensor]:
    adv_logits = None
    if config.use_dann:
        with _autocast(x.device, autocast_dtype):
            adv_logits = classifier(grad_reverse(z, model.grl_lambda))
    terms = autoencoder_objective(z, x, x_hat, model.center, is_anomaly, config, adv_logits, domain)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return terms


def autoencoder_step(
    model: CAEDANN,
    x: Tensor,
    domain: Tensor,
    is_anomaly: Tensor,
    config: LossConfig,
    optimizer: torch.optim.Optimizer,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    autoencoder: nn.Module | None = None,
    classifier: nn.Module | None = None,
) -> dict[str, float]:
    """Step 2 of Algorithm 1: one update of the autoencoder on Eq. 8.

    ``optimizer`` must hold the autoencoder's parameters only (the classifier is "frozen" by
    not being stepped).  ``x`` are scaled inputs ``[B, 1, H, W]``, ``domain`` integer labels,
    ``is_anomaly`` a bool mask of pseudo-anomalies.  The SVDD center must have been set with
    :func:`~harken.systems.cae_dann.torch_model.init_center` when ``config.use_svdd``.
    Returns ``{"loss", "recon", "svdd", "svdd_normal", "svdd_anomaly", "adv"}``.
    """
    autoencoder = model.autoencoder if autoencoder is None else autoencoder
    classifier = model.domain_classifier if classifier is None else classifier
    device = _device(model)
    x = prepare_input(x, device, channels_last)
    domain = domain.to(device, non_blocking=True).long().reshape(-1)
    is_anomaly = is_anomaly.to(device, non_blocking=True).bool().reshape(-1)
    with _autocast(device, autocast_dtype):
        z, x_hat = autoencoder(x)
    terms = _autoencoder_update(
        model, z, x, x_hat, domain, is_anomaly, config, optimizer, autocast_dtype, classifier
    )
    return _floats(terms)


def train_step(
    model: CAEDANN,
    x: Tensor,
    domain: Tensor,
    is_anomaly: Tensor,
    config: LossConfig,
    ae_optimizer: torch.optim.Optimizer,
    clf_optimizer: torch.optim.Optimizer | None,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    autoencoder: nn.Module | None = None,
    classifier: nn.Module | None = None,
) -> dict[str, float]:
    """Both steps of Algorithm 1 for one batch, sharing one autoencoder forward.

    Step 1 (classifier on ``z.detach()``) runs when ``config.use_dann`` and ``clf_optimizer``
    is given; then step 2 uses the *updated* classifier for the adversarial term, as in
    Algorithm 1.  Returns the union of both steps' logged values.
    """
    autoencoder = model.autoencoder if autoencoder is None else autoencoder
    classifier = model.domain_classifier if classifier is None else classifier
    device = _device(model)
    x = prepare_input(x, device, channels_last)
    domain = domain.to(device, non_blocking=True).long().reshape(-1)
    is_anomaly = is_anomaly.to(device, non_blocking=True).bool().reshape(-1)
    with _autocast(device, autocast_dtype):
        z, x_hat = autoencoder(x)
    logged: dict[str, Tensor] = {}
    if config.use_dann and clf_optimizer is not None:
        clf_optimizer.zero_grad(set_to_none=True)
        with _autocast(device, autocast_dtype):
            logits = classifier(z.detach())
        d_loss = domain_loss(logits, domain)
        d_loss.backward()
        clf_optimizer.step()
        logged["domain_loss"] = d_loss.detach()
        logged["domain_acc"] = (logits.detach().argmax(dim=1) == domain).float().mean()
    terms = _autoencoder_update(
        model, z, x, x_hat, domain, is_anomaly, config, ae_optimizer, autocast_dtype, classifier
    )
    return _floats({**terms, **logged})
