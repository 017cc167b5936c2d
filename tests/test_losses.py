"""Loss terms against Eq. 5 / Eq. 8 by hand, and the two alternating update steps."""

from __future__ import annotations

import math

import pytest
import torch

from harken.config import LossConfig
from harken.systems.cae_dann.loss import (
    autoencoder_objective,
    autoencoder_step,
    classifier_step,
    domain_loss,
    reconstruction_loss,
    svdd_loss,
    train_step,
)
from harken.systems.cae_dann.torch_model import CAEDANN, init_center

C = torch.tensor([1.0, 0.0])


def z_(*rows: tuple[float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def mask(*flags: int) -> torch.Tensor:
    return torch.tensor(flags, dtype=torch.bool)


# ----------------------------------------------------------------------------- Eq. 5


def test_svdd_mixed_batch_by_hand() -> None:
    # normals: (1,0) -> 0, (2,0) -> 1; mean 0.5.
    # anomalies: (1,1) -> d=1, max(0, 3-1) = 2; (4,0) -> d=9, max(0, 3-9) = 0; mean 1.
    z = z_((1, 0), (1, 1), (2, 0), (4, 0))
    assert svdd_loss(z, C, mask(0, 1, 0, 1), nu=3.0).item() == pytest.approx(1.5)


def test_svdd_all_normal() -> None:
    z = z_((1, 0), (2, 0), (1, 2))  # distances 0, 1, 4
    loss = svdd_loss(z, C, mask(0, 0, 0), nu=3.0)
    assert loss.item() == pytest.approx(5 / 3)


def test_svdd_all_anomalies() -> None:
    z = z_((1, 0), (1.5, 0))  # distances 0 -> 3, 0.25 -> 2.75
    assert svdd_loss(z, C, mask(1, 1), nu=3.0).item() == pytest.approx(2.875)


def test_svdd_margin_exceeded_is_zero() -> None:
    z = z_((4, 0), (1, -2))  # distances 9 and 4, both beyond nu = 3
    z.requires_grad_(True)
    loss = svdd_loss(z, C, mask(1, 1), nu=3.0)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.equal(grad, torch.zeros_like(z))  # hinge inactive: no push


def test_svdd_empty_batch_and_gradients_finite() -> None:
    z = torch.zeros(0, 2)
    assert svdd_loss(z, C, torch.zeros(0, dtype=torch.bool)).item() == 0.0
    z = z_((2, 0), (3, 0)).requires_grad_(True)
    loss = svdd_loss(z, C, mask(0, 0))
    (grad,) = torch.autograd.grad(loss, z)
    # d/dz mean ||z - c||^2 = 2 (z - c) / n
    assert torch.allclose(grad, z_((1, 0), (2, 0)))


def test_svdd_nu_is_used() -> None:
    z = z_((1, 1))  # distance 1
    assert svdd_loss(z, C, mask(1), nu=5.0).item() == pytest.approx(4.0)


def test_svdd_accepts_integer_mask() -> None:
    z = z_((1, 0), (1, 1))
    assert svdd_loss(z, C, torch.tensor([0, 1]), nu=3.0).item() == pytest.approx(2.0)


# ----------------------------------------------------------------------------- other terms


def test_reconstruction_loss_normals_only() -> None:
    x = torch.zeros(3, 1, 2, 2)
    x_hat = torch.stack(
        [torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 0.9), torch.full((1, 2, 2), 0.1)]
    )
    # normals are items 0 and 2: (0.25 + 0.01) / 2; the anomaly's 0.81 must not count
    assert reconstruction_loss(x, x_hat, mask(0, 1, 0)).item() == pytest.approx(0.13)
    assert reconstruction_loss(x, x_hat, mask(1, 1, 1)).item() == 0.0


def test_domain_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    # -log(1/2) and -log(e^0 / (e^2 + e^0)) = log(1 + e^2)
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2
    assert domain_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-6)


def test_objective_total_and_switches() -> None:
    z = z_((1, 0), (1, 1))
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.full((2, 1, 2, 2), 0.5)  # recon 0.25 (normal item only)
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # adv = log 2
    domain = torch.tensor([0, 1])
    anomaly = mask(0, 1)  # svdd = 0 + max(0, 3 - 1) = 2
    cfg = LossConfig(alpha_recon=0.5, svdd_nu=3.0)
    terms = autoencoder_objective(z, x, x_hat, C, anomaly, cfg, logits, domain)
    assert terms["recon"].item() == pytest.approx(0.25)
    assert terms["svdd"].item() == pytest.approx(2.0)
    assert terms["svdd_normal"].item() == pytest.approx(0.0)
    assert terms["svdd_anomaly"].item() == pytest.approx(2.0)
    assert terms["adv"].item() == pytest.approx(math.log(2))
    assert terms["loss"].item() == pytest.approx(0.5 * 0.25 + 2.0 + math.log(2))

    no_svdd = autoencoder_objective(
        z, x, x_hat, C, anomaly, LossConfig(use_svdd=False), logits, domain
    )
    assert no_svdd["svdd"].item() == 0.0
    assert no_svdd["loss"].item() == pytest.approx(0.5 * 0.25 + math.log(2))
    no_dann = autoencoder_objective(z, x, x_hat, C, anomaly, LossConfig(use_dann=False))
    assert no_dann["adv"].item() == 0.0
    assert no_dann["loss"].item() == pytest.approx(0.5 * 0.25 + 2.0)
    with pytest.raises(ValueError, match="use_dann"):
        autoencoder_objective(z, x, x_hat, C, anomaly, cfg)


# ----------------------------------------------------------------------------- steps


def tiny() -> tuple[CAEDANN, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = CAEDANN(n_mels=16, frames=32, channels=(4, 4, 8, 8), latent_dim=8, domain_hidden=6)
    x = torch.rand(8, 1, 16, 32)
    init_center(model, [x])
    domain = torch.tensor([0, 1] * 4)
    anomaly = mask(0, 0, 1, 1, 0, 0, 1, 1)
    return model, x, domain, anomaly


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p)}


def test_every_parameter_gets_a_gradient() -> None:
    model, x, domain, anomaly = tiny()
    z, x_hat = model(x)
    # step 2: the whole Eq. 8, adversarial term through the GRL
    terms = autoencoder_objective(
        z,
        x,
        x_hat,
        model.center,
        anomaly,
        LossConfig(),
        model.domain_logits(z, reverse=True),
        domain,
    )
    terms["loss"].backward()
    for name, p in model.autoencoder.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name
    model.zero_grad(set_to_none=True)
    # step 1: the classifier on detached latents; no gradient reaches the autoencoder
    z, _ = model(x)
    domain_loss(model.domain_logits(z.detach(), reverse=False), domain).backward()
    for name, p in model.domain_classifier.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name
    assert all(p.grad is None for p in model.autoencoder.parameters())


def test_classifier_step_changes_only_classifier() -> None:
    model, x, domain, _ = tiny()
    opt = torch.optim.AdamW(model.domain_classifier.parameters(), lr=1e-2)
    ae_before, clf_before = snapshot(model.autoencoder), snapshot(model.domain_classifier)
    logged = classifier_step(model, x, domain, opt)
    assert set(logged) == {"domain_loss", "domain_acc"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in logged.values())
    assert changed(ae_before, model.autoencoder) == set()
    assert changed(clf_before, model.domain_classifier) == set(clf_before)


def test_autoencoder_step_changes_only_autoencoder() -> None:
    model, x, domain, anomaly = tiny()
    opt = torch.optim.AdamW(model.autoencoder.parameters(), lr=1e-2)
    ae_before, clf_before = snapshot(model.autoencoder), snapshot(model.domain_classifier)
    logged = autoencoder_step(model, x, domain, anomaly, LossConfig(), opt)
    assert set(logged) == {"loss", "recon", "svdd", "svdd_normal", "svdd_anomaly", "adv"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in logged.values())
    assert logged["loss"] == pytest.approx(
        0.5 * logged["recon"] + logged["svdd"] + logged["adv"], rel=1e-5
    )
    assert changed(clf_before, model.domain_classifier) == set()
    assert changed(ae_before, model.autoencoder) == set(ae_before)


def test_train_step_equals_the_two_steps() -> None:
    a, x, domain, anomaly = tiny()
    b, _, _, _ = tiny()
    opts = []
    for model in (a, b):
        opts.append(
            (
                torch.optim.AdamW(model.autoencoder.parameters(), lr=1e-3),
                torch.optim.AdamW(model.domain_classifier.parameters(), lr=1e-3),
            )
        )
    cfg = LossConfig()
    torch.manual_seed(5)  # same dropout masks, drawn in the same order
    la = train_step(a, x, domain, anomaly, cfg, *opts[0])
    torch.manual_seed(5)
    lb = classifier_step(b, x, domain, opts[1][1])
    lb.update(autoencoder_step(b, x, domain, anomaly, cfg, opts[1][0]))
    assert la.keys() == lb.keys()
    for key in la:
        assert la[key] == pytest.approx(lb[key], rel=1e-5, abs=1e-7), key
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), na


def test_train_step_without_dann_leaves_classifier() -> None:
    model, x, domain, anomaly = tiny()
    ae = torch.optim.AdamW(model.autoencoder.parameters(), lr=1e-3)
    clf = torch.optim.AdamW(model.domain_classifier.parameters(), lr=1e-3)
    before = snapshot(model.domain_classifier)
    logged = train_step(model, x, domain, anomaly, LossConfig(use_dann=False), ae, clf)
    assert "domain_loss" not in logged and logged["adv"] == 0.0
    assert changed(before, model.domain_classifier) == set()


def test_steps_with_bf16_autocast_and_channels_last() -> None:
    model, x, domain, anomaly = tiny()
    model = model.to(memory_format=torch.channels_last)
    ae = torch.optim.AdamW(model.autoencoder.parameters(), lr=1e-3)
    clf = torch.optim.AdamW(model.domain_classifier.parameters(), lr=1e-3)
    before = snapshot(model.autoencoder)
    logged = train_step(
        model,
        x,
        domain,
        anomaly,
        LossConfig(),
        ae,
        clf,
        autocast_dtype=torch.bfloat16,
        channels_last=True,
    )
    assert all(math.isfinite(v) for v in logged.values())
    assert changed(before, model.autoencoder) == set(before)
    logged = classifier_step(
        model, x, domain, clf, autocast_dtype=torch.bfloat16, channels_last=True
    )
    assert all(math.isfinite(v) for v in logged.values())
