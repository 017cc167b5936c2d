"""Audio Mamba network: shapes, gradients, bidirectionality, GRL and the mambapy mixer."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("mambapy")

from mambapy.mamba import MambaBlock, MambaConfig  # noqa: E402

from harken.config import AuMConfig, ModelConfig  # noqa: E402
from harken.systems.aum.torch_model import AudioMamba, grid_shape  # noqa: E402
from harken.systems.cae_dann.torch_model import init_center, svdd_distance  # noqa: E402

N_MELS, FRAMES, PATCH = 64, 128, 16


def small(**kwargs: object) -> AudioMamba:
    torch.manual_seed(0)
    args: dict = {
        "n_mels": N_MELS,
        "frames": FRAMES,
        "patch": PATCH,
        "embed_dim": 32,
        "depth": 2,
        "d_state": 4,
    }
    args.update(kwargs)
    return AudioMamba(**args)


def test_shapes() -> None:
    model = small().eval()
    x = torch.randn(3, N_MELS, FRAMES)
    assert grid_shape(N_MELS, FRAMES, PATCH) == (4, 8)
    states, cls_index = model.tokens(x)
    assert states.shape == (3, 4 * 8 + 1, 32)
    assert cls_index == 16  # middle of the 32 patches
    z = model(x)
    assert z.shape == (3, 32)
    torch.testing.assert_close(z, states[:, cls_index])
    torch.testing.assert_close(model(x.unsqueeze(1)), z)  # [B, 1, F, T] accepted too
    assert model.domain_logits(z, reverse=True).shape == (3, 2)
    assert model.domain_logits(z, reverse=False).shape == (3, 2)


def test_from_config_and_resampled_positions() -> None:
    cfg = AuMConfig(patch=16, embed_dim=16, depth=1, d_state=4)
    model = AudioMamba.from_config(
        cfg, N_MELS, FRAMES, ModelConfig(domain_hidden=8, grl_lambda=0.3)
    )
    assert model.embed_dim == 16 and model.depth == 1 and model.grl_lambda == 0.3
    assert model.pos_embed.shape == (1, 1 + 32, 16)
    # A longer input than the model was built for: the grid positions are resampled.
    z = model.eval()(torch.randn(2, N_MELS, 2 * FRAMES))
    assert z.shape == (2, 16) and torch.isfinite(z).all()
    with pytest.raises(ValueError):
        model(torch.randn(1, 8, FRAMES))  # smaller than one patch


def test_gradient_reaches_every_parameter_and_no_nan() -> None:
    model = small().train()
    # Unscaled dB log-mel values (-100..+20 dB) must not overflow the scan.
    x = torch.rand(4, N_MELS, FRAMES) * 120 - 100
    domains = torch.tensor([0, 1, 0, 1])
    z = model(x)
    loss = z.pow(2).sum(1).mean() + F.cross_entropy(model.domain_logits(z, reverse=True), domains)
    assert torch.isfinite(z).all() and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient in {name}"


def _first_token_gradient_on_last_patch(bidirectional: bool) -> torch.Tensor:
    # float64: at initialization a selective scan forgets quickly (data-dependent step sizes),
    # so the influence of a patch 32 tokens away is ~1e-10, below float32 rounding noise.
    model = small(bidirectional=bidirectional).eval().double()
    x = torch.randn(2, N_MELS, FRAMES, dtype=torch.float64, requires_grad=True)
    states, _ = model.tokens(x)
    states[:, 0].sum().backward()
    assert x.grad is not None
    return x.grad[:, -PATCH:, -PATCH:]  # last patch of the frequency-major sequence


def test_bidirectional_first_token_depends_on_last_patch() -> None:
    assert _first_token_gradient_on_last_patch(True).abs().max() > 0
    # Control: with the forward scan only, the first token cannot see any later patch.
    assert _first_token_gradient_on_last_patch(False).abs().max() == 0


def test_bidirectional_finite_difference_on_short_sequence() -> None:
    x = torch.randn(2, PATCH, FRAMES)  # a 1 x 8 patch grid: 9 tokens
    changed = x.clone()
    changed[:, :, -PATCH:] += 5.0  # the last patch
    for bidirectional in (True, False):
        model = small(n_mels=PATCH, bidirectional=bidirectional).eval()
        with torch.no_grad():
            before, cls_index = model.tokens(x)
            after, _ = model.tokens(changed)
        first = (after[:, 0] - before[:, 0]).abs().max()
        middle = (after[:, cls_index] - before[:, cls_index]).abs().max()
        if bidirectional:
            assert first > 1e-6 and middle > 1e-4
        else:
            assert first == 0 and middle == 0
            assert (after[:, -1] - before[:, -1]).abs().max() > 1e-4


def test_bidirectional_mixer_equals_two_unidirectional_mamba_blocks() -> None:
    """mambapy's Vim block (marked work-in-progress upstream) checked against its plain Mamba
    block: the shared-projection bidirectional mixer must equal the mean of a forward pass and
    a flipped backward pass of two unidirectional blocks holding the same weights."""
    model = small(depth=1).eval()
    bi = model.layers[0].mixer
    cfg = MambaConfig(d_model=32, n_layers=1, d_state=4, d_conv=4, expand_factor=2)
    fwd, bwd = MambaBlock(cfg), MambaBlock(cfg)
    suffix = {
        "conv1d": "conv1d_b",
        "x_proj": "x_proj_b",
        "dt_proj": "dt_proj_b",
        "A_log": "A_log_b",
        "D": "D_b",
    }
    with torch.no_grad():
        for block, backward in ((fwd, False), (bwd, True)):
            for name, p in block.named_parameters():
                top, _, rest = name.partition(".")
                source = suffix[top] if backward and top in suffix else top
                src = getattr(bi, source)
                p.copy_(getattr(src, rest) if rest else src)
    x = torch.randn(2, 33, 32)
    with torch.no_grad():
        expected = (fwd(x) + bwd(x.flip(1)).flip(1)) / 2
        got = bi(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_gradient_reversal_flips_encoder_gradient() -> None:
    model = small().eval()  # eval: no dropout, BatchNorm with running statistics
    x = torch.randn(3, N_MELS, FRAMES)
    domains = torch.tensor([0, 1, 1])
    grads = {}
    for reverse in (False, True):
        z = model(x).detach().requires_grad_(True)
        F.cross_entropy(model.domain_logits(z, reverse=reverse), domains).backward()
        grads[reverse] = z.grad
    torch.testing.assert_close(grads[True], -model.grl_lambda * grads[False])


def test_svdd_center_and_weights_only_round_trip() -> None:
    model = small()
    batches = [torch.randn(2, N_MELS, FRAMES) for _ in range(2)]
    center = init_center(model, batches, eps=0.1)  # CAE-DANN's helper works on AuM as is
    assert model.has_center() and center.shape == (32,)
    model.eval()
    x = torch.randn(2, N_MELS, FRAMES)
    with torch.no_grad():
        dist = svdd_distance(model(x), model.center)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    clone = small()
    clone.load_state_dict(state)
    clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(svdd_distance(clone(x), clone.center), dist)
