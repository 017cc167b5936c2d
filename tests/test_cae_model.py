"""CAE-DANN networks: sizes against the report, GRL, SVDD center, scorer, complexity counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harken.complexity import cae_macs, measured_macs, parameter_count
from harken.config import LossConfig, ModelConfig
from harken.systems.cae_dann.loss import train_step
from harken.systems.cae_dann.torch_model import (
    CAEDANN,
    CAEScorer,
    ConvAutoencoder,
    GradientReversal,
    grad_reverse,
    guard_center,
    init_center,
    score_inputs,
)

SMALL = {"n_mels": 32, "frames": 64, "channels": (4, 8, 8, 16), "latent_dim": 8, "domain_hidden": 6}


def conv_params(c_in: int, c_out: int) -> int:
    return c_in * c_out * 9 + c_out  # 3x3 kernel + bias


def bn_params(c: int) -> int:
    return 2 * c  # weight + bias (running stats are buffers)


def linear_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def expected_ae_params(h: int, w: int, channels: list[int], latent: int) -> int:
    widths = [1, *channels]
    enc = sum(
        conv_params(widths[i], widths[i + 1]) + bn_params(widths[i + 1])
        for i in range(len(channels))
    )
    flat = channels[-1] * (h // 16) * (w // 16)
    rev = widths[::-1]
    dec = sum(conv_params(rev[i], rev[i + 1]) for i in range(len(channels)))  # deconv: same count
    dec += sum(bn_params(rev[i + 1]) for i in range(len(channels) - 1))  # no BN after the last
    return enc + linear_params(flat, latent) + linear_params(latent, flat) + dec


def small_model(**kw: object) -> CAEDANN:
    torch.manual_seed(0)
    return CAEDANN(**{**SMALL, **kw})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- sizes


def test_report_parameter_count() -> None:
    model = CAEDANN.from_config(ModelConfig(), n_mels=128, frames=1024)
    # By hand: convs 97,152 + BN 480 + Linear(65536->128) 8,388,736 + Linear(128->65536)
    # 8,454,144 + deconvs 97,025 + BN 224.
    assert expected_ae_params(128, 1024, [16, 32, 64, 128], 128) == 17_037_761
    assert parameter_count(model.autoencoder) == 17_037_761
    assert round(parameter_count(model.autoencoder) / 1e6, 2) == 17.04
    # classifier: Linear(128, 64) + BN(64) + Linear(64, 2)
    assert parameter_count(model.domain_classifier) == 128 * 64 + 64 + 128 + 64 * 2 + 2 == 8514
    assert parameter_count(model) == 17_037_761 + 8514
    assert model.autoencoder.bottleneck_shape == (128, 8, 64)


def test_report_size_shapes() -> None:
    model = CAEDANN().eval()
    with torch.no_grad():
        z, x_hat = model(torch.rand(1, 1, 128, 1024))
    assert z.shape == (1, 128)
    assert x_hat.shape == (1, 1, 128, 1024)
    assert float(x_hat.min()) >= 0.0 and float(x_hat.max()) <= 1.0  # Sigmoid output


def test_small_model_sizes_and_shapes() -> None:
    model = small_model()
    assert parameter_count(model.autoencoder) == expected_ae_params(32, 64, [4, 8, 8, 16], 8)
    x = torch.rand(3, 1, 32, 64)
    z, x_hat = model(x)
    assert z.shape == (3, 8) and x_hat.shape == x.shape
    assert model.encode(x).shape == (3, 8)
    assert model.decode(z).shape == x.shape
    assert model.domain_logits(z, reverse=False).shape == (3, 2)


@pytest.mark.parametrize("size", [(30, 64), (32, 72), (8, 64)])
def test_input_size_must_mirror(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        ConvAutoencoder(size[0], size[1])


def test_submodules_are_separate() -> None:
    model = small_model()
    ae = {id(p) for p in model.autoencoder.parameters()}
    clf = {id(p) for p in model.domain_classifier.parameters()}
    assert ae and clf and not ae & clf
    assert ae | clf == {id(p) for p in model.parameters()}


# ----------------------------------------------------------------------------- complexity


def test_mac_counts() -> None:
    macs = cae_macs(ModelConfig(), 128, 1024)
    # Conv layers by output positions: 64x512*1*16*9 + 3 * 37,748,736.
    conv = (
        64 * 512 * 16 * 9 + 32 * 256 * 16 * 32 * 9 + 16 * 128 * 32 * 64 * 9 + 8 * 64 * 64 * 128 * 9
    )
    linear = 2 * 65536 * 128
    # Deconvs, true: by *input* positions; report convention: by output positions.
    deconv_true = (
        8 * 64 * 128 * 64 * 9 + 16 * 128 * 64 * 32 * 9 + 32 * 256 * 32 * 16 * 9 + 64 * 512 * 16 * 9
    )
    deconv_report = (
        16 * 128 * 128 * 64 * 9
        + 32 * 256 * 64 * 32 * 9
        + 64 * 512 * 32 * 16 * 9
        + 128 * 1024 * 16 * 9
    )
    assert macs["true"] == conv + linear + deconv_true == 252_706_816
    assert macs["report"] == conv + linear + deconv_report == 606_601_216
    assert round(macs["report"] / 1e9, 2) == 0.61  # the report's "0.61 GMACs"
    assert round(macs["true"] / 1e9, 2) == 0.25


def test_true_macs_match_flop_counter() -> None:
    model = small_model()
    assert measured_macs(model.autoencoder, (1, 1, 32, 64)) == cae_macs(model)["true"]
    assert model.training  # mode restored
    with torch.device("meta"):  # the report's size, shapes only
        full = CAEDANN()
    assert measured_macs(full.autoencoder, (1, 1, 128, 1024)) == 252_706_816


def test_mac_count_rejects_other_input_size() -> None:
    with pytest.raises(ValueError, match="built for"):
        cae_macs(small_model(), 64, 64)


# ----------------------------------------------------------------------------- GRL


def test_grl_forward_identity_backward_reversed() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    y = grad_reverse(x, 0.1)
    assert torch.equal(y, x)
    upstream = torch.randn(5, 3)
    (grad,) = torch.autograd.grad(y, x, upstream)
    assert torch.allclose(grad, -0.1 * upstream)


def test_grl_gradcheck() -> None:
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    # gradcheck compares the analytical gradient with finite differences of the forward (the
    # identity).  With lambda = -1 the "reversal" is the identity gradient, so it must pass
    # (backward is well formed); with lambda = 0.1 the gradient is -0.1 I and it must fail.
    assert torch.autograd.gradcheck(lambda t: GradientReversal.apply(t, -1.0), (x,))
    assert not torch.autograd.gradcheck(
        lambda t: GradientReversal.apply(t, 0.1), (x,), raise_exception=False
    )
    jac = torch.autograd.functional.jacobian(lambda t: GradientReversal.apply(t, 0.25), x)
    assert torch.allclose(jac.reshape(12, 12), -0.25 * torch.eye(12, dtype=torch.float64))


def test_domain_logits_reverse_flips_encoder_gradient() -> None:
    model = small_model().eval()  # eval: BN running stats, no dropout -> deterministic
    x = torch.rand(4, 1, 32, 64)
    domain = torch.tensor([0, 1, 0, 1])
    enc = [p for p in model.autoencoder.encoder.parameters()]

    def grads(reverse: bool) -> list[torch.Tensor]:
        loss = nn.functional.cross_entropy(model.domain_logits(model.encode(x), reverse), domain)
        return list(torch.autograd.grad(loss, enc))

    plain, rev = grads(False), grads(True)
    for g_plain, g_rev in zip(plain, rev, strict=True):
        assert torch.allclose(g_rev, -model.grl_lambda * g_plain, atol=1e-7)
    assert any(float(g.abs().sum()) > 0 for g in plain)


# ----------------------------------------------------------------------------- center


def test_guard_center_by_hand() -> None:
    c = torch.tensor([0.05, -0.05, 0.0, 0.5, -0.3, 0.1, -0.1])
    assert torch.equal(guard_center(c, 0.1), torch.tensor([0.1, -0.1, 0.1, 0.5, -0.3, 0.1, -0.1]))


def test_init_center_is_mean_latent_in_eval_mode() -> None:
    model = small_model()
    model.train()
    batches = [torch.rand(3, 1, 32, 64), torch.rand(5, 1, 32, 64)]
    # feed the batch counter: a running-stat update would be a train-mode forward
    before = model.autoencoder.encoder[0][1].num_batches_tracked.clone()
    c = init_center(model, [(b, "ignored") for b in batches], eps=0.0)
    assert model.training
    assert torch.equal(model.autoencoder.encoder[0][1].num_batches_tracked, before)
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model.encode(b) for b in batches]).double().mean(0).float()
    assert torch.allclose(c, expected, atol=1e-6)
    assert torch.equal(model.center, c)


def test_init_center_all_reduce_combines_ranks() -> None:
    model = small_model()
    mine, theirs = torch.rand(3, 1, 32, 64), torch.rand(4, 1, 32, 64)
    model.eval()
    with torch.no_grad():
        z_theirs = model.encode(theirs).double()
        expected = torch.cat([model.encode(mine), model.encode(theirs)]).double().mean(0)
    model.train()
    other_rank = torch.cat([z_theirs.sum(0), torch.tensor([4.0], dtype=torch.float64)])
    c = init_center(model, [mine], eps=0.0, all_reduce=lambda t: t.add_(other_rank))
    assert torch.allclose(c.double(), expected, atol=1e-6)
    # a reducer that returns its result instead of working in place is honoured too
    c2 = init_center(model, [mine], eps=0.0, all_reduce=lambda t: t + other_rank)
    assert torch.allclose(c2, c)


def test_init_center_without_inputs_fails() -> None:
    with pytest.raises(ValueError, match="no inputs"):
        init_center(small_model(), [])


def test_center_is_fixed_buffer() -> None:
    model = small_model()
    assert not model.has_center()
    eps = LossConfig().center_eps
    c = init_center(model, [torch.rand(4, 1, 32, 64)], eps=eps)
    assert model.has_center()
    assert torch.isfinite(c).all() and bool((c.abs() >= eps - 1e-7).all())
    assert "center" in dict(model.named_buffers())
    assert all(p is not model.center for p in model.parameters())
    assert not model.center.requires_grad
    assert "center" in model.state_dict()
    before = model.center.clone()
    opt = torch.optim.AdamW(model.autoencoder.parameters(), lr=1e-2)
    clf = torch.optim.AdamW(model.domain_classifier.parameters(), lr=1e-2)
    x = torch.rand(4, 1, 32, 64)
    train_step(
        model,
        x,
        torch.tensor([0, 1, 0, 1]),
        torch.tensor([False, True, False, True]),
        LossConfig(),
        opt,
        clf,
    )
    assert torch.equal(model.center, before)


# ----------------------------------------------------------------------------- scoring


def test_scorer_matches_definitions() -> None:
    model = small_model()
    init_center(model, [torch.rand(4, 1, 32, 64)])
    x = torch.rand(3, 1, 32, 64)
    model.train()
    scores = score_inputs(model, x)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        z, x_hat = model(x)
    recon = ((x - x_hat) ** 2).sum(dim=(1, 2, 3)) / (1 * 32 * 64)  # Eq. 9
    svdd = ((z - model.center) ** 2).sum(dim=1)
    assert torch.allclose(scores["reconstruction"], recon, rtol=1e-5)
    assert torch.allclose(scores["svdd"], svdd, rtol=1e-5)
    scorer = model.scorer()
    assert isinstance(scorer, CAEScorer)
    with torch.no_grad():
        r, s = scorer(x)
    assert torch.allclose(r, recon, rtol=1e-5) and torch.allclose(s, svdd, rtol=1e-5)
    assert scorer.output_names == ("reconstruction", "svdd")


def test_scorer_follows_loaded_center() -> None:
    model = small_model()
    scorer = model.scorer().eval()
    state = model.state_dict()
    state["center"] = torch.full_like(state["center"], 0.5)
    model.load_state_dict(state)
    x = torch.rand(2, 1, 32, 64)
    with torch.no_grad():
        z, _ = model.eval()(x)
        _, svdd = scorer(x)
    assert torch.allclose(svdd, ((z - 0.5) ** 2).sum(1), rtol=1e-5)


def test_scorer_exports_with_dynamic_batch() -> None:
    # torch.export (what the ONNX exporter runs first) refuses data-dependent Python control
    # flow; a symbolic batch dimension proves the graph serves any batch size.
    model = small_model()
    init_center(model, [torch.rand(4, 1, 32, 64)])
    scorer = model.scorer().eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(
        scorer, (torch.rand(2, 1, 32, 64),), dynamic_shapes={"x": {0: batch}}
    )
    x = torch.rand(5, 1, 32, 64)
    with torch.no_grad():
        for a, b in zip(program.module()(x), scorer(x), strict=True):
            assert a.shape == (5,)
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_no_hypersphere_collapse_after_brief_training() -> None:
    model = small_model()
    torch.manual_seed(1)
    data = torch.rand(16, 1, 32, 64)
    init_center(model, [data])
    ae_opt = torch.optim.AdamW(model.autoencoder.parameters(), lr=1e-3)
    clf_opt = torch.optim.AdamW(model.domain_classifier.parameters(), lr=1e-3)
    domain = torch.tensor([0, 1] * 4)
    anomaly = torch.tensor([False] * 4 + [True] * 4)
    for step in range(8):
        batch = data[(step % 2) * 8 : (step % 2) * 8 + 8]
        logged = train_step(model, batch, domain, anomaly, LossConfig(), ae_opt, clf_opt)
        assert all(v == v for v in logged.values())  # no NaN
    scores = score_inputs(model, torch.rand(10, 1, 32, 64))
    assert float(scores["svdd"].std()) > 0
    assert float(scores["reconstruction"].std()) > 0
    assert torch.isfinite(scores["svdd"]).all() and torch.isfinite(scores["reconstruction"]).all()
