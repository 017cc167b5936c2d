"""Audio Mamba (AuM; Erol, Senocak, Feng & Chung, IEEE SPL 2024) as an embedding network.

Architecture, following the authors' code (kaistmm/Audio-Mamba-AuM, ``src/models/mamba_models.py``,
defaults: bimamba "v2", middle class token, absolute position embedding, RMSNorm, no RoPE):

1. Patch embedding: a ``patch x patch`` convolution with stride ``patch`` over the
   ``[n_mels, frames]`` log-mel (128 x 1024 with 16 x 16 patches gives an 8 x 64 grid, 512
   tokens), flattened frequency-major like AuM's ``flatten(2)`` of the ``[F, T]`` grid.
2. A learnable class token inserted in the *middle* of the sequence (position ``N // 2``):
   with a bidirectional scan, a middle token sees half the sequence from each direction after
   equally short paths, where a first or last token would be reached late by one direction.
3. A learnable absolute position embedding (class-token entry first, then the patch grid), added
   after the insertion; for another input size the grid part is resampled bilinearly.
4. ``depth`` residual blocks ``x + Mixer(RMSNorm(x))`` whose mixer is a bidirectional Mamba
   (Vision-Mamba "v2", AuM's "Fo-Bi"): one shared input projection, a forward and a backward
   causal conv + selective state-space scan with separate parameters over the reversed
   sequence, each gated by SiLU(z), averaged, one shared output projection.  The pure-PyTorch
   parallel scan of ``mambapy.vim`` runs it on CPU; mamba-ssm's CUDA selective scan is used
   for CUDA inputs when that package is installed.
5. A final RMSNorm; the class token's state is the embedding ``z`` (no classification head).

For anomaly detection the embedding feeds Deep SVDD (``||z - c||^2`` with a fixed center
buffer ``center``, as in CAE-DANN) and, through a gradient reversal layer, the CAE-DANN domain
classifier; both, and the GRL, are reused from :mod:`harken.systems.cae_dann.torch_model`, so
the AuM system can share CAE-DANN's ``init_center`` and ``svdd_distance``.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harken.config import AuMConfig, ModelConfig
from harken.systems.cae_dann.torch_model import DomainClassifier, grad_reverse

try:  # the pure-PyTorch Mamba; an optional dependency (the ``mamba`` extra)
    from mambapy.vim import MambaConfig as _VimConfig
    from mambapy.vim import ResidualBlock as _VimResidualBlock
    from mambapy.vim import RMSNorm
except ImportError as exc:  # pragma: no cover - exercised only without mambapy
    raise ImportError(
        "Audio Mamba needs the 'mambapy' package: pip install 'harken[mamba]'"
    ) from exc


def _find_cuda_scan() -> Any:
    """mamba-ssm's fused CUDA selective scan, or None when mamba-ssm is not installed."""
    if importlib.util.find_spec("mamba_ssm") is None:
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - a broken CUDA build must not break CPU use
        return None
    return selective_scan_fn


_CUDA_SCAN = _find_cuda_scan()


def grid_shape(n_mels: int, frames: int, patch: int) -> tuple[int, int]:
    """Patch grid ``(frequency, time)`` of a ``n_mels x frames`` input (remainders dropped)."""
    if n_mels < patch or frames < patch:
        raise ValueError(f"input {n_mels} x {frames} is smaller than one {patch} x {patch} patch")
    return n_mels // patch, frames // patch


class AudioMamba(nn.Module):
    """AuM encoder: log-mel ``[B, n_mels, frames]`` (or ``[B, 1, n_mels, frames]``) to ``z [B, D]``.

    ``forward`` returns the embedding; :meth:`domain_logits` runs the domain classifier on it,
    through the gradient reversal layer when ``reverse`` is true (the adversarial step) and
    without it for detached inputs (the classifier's own step), exactly like ``CAEDANN``.
    ``bidirectional=False`` keeps only the forward scan (an ablation, and the control in the
    bidirectionality test).
    """

    center: Tensor

    def __init__(
        self,
        n_mels: int = 128,
        frames: int = 1024,
        patch: int = 16,
        embed_dim: int = 64,
        depth: int = 2,
        d_state: int = 8,
        d_conv: int = 4,
        expand: int = 2,
        domain_hidden: int = 64,
        domain_dropout: float = 0.5,
        grl_lambda: float = 0.1,
        n_domains: int = 2,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        if patch < 1 or embed_dim < 1 or depth < 1 or d_state < 1:
            raise ValueError("patch, embed_dim, depth and d_state must be positive")
        self.n_mels = int(n_mels)
        self.frames = int(frames)
        self.patch = int(patch)
        self.embed_dim = int(embed_dim)
        self.depth = int(depth)
        self.grid = grid_shape(self.n_mels, self.frames, self.patch)
        self.n_patches = self.grid[0] * self.grid[1]
        self.grl_lambda = float(grl_lambda)

        self.patch_embed = nn.Conv2d(1, embed_dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Entry 0 belongs to the class token, entries 1.. to the patch grid (row-major F x T).
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.n_patches, embed_dim))

        # One config object shared by all blocks: toggling ``use_cuda`` per call switches
        # every block between mamba-ssm's CUDA scan and the PyTorch scan at once.
        self.mamba_config = _VimConfig(
            d_model=embed_dim,
            n_layers=depth,
            d_state=d_state,
            d_conv=d_conv,
            expand_factor=expand,
            bidirectional=bidirectional,
            divide_output=True,
            use_cuda=False,
        )
        self.layers = nn.ModuleList([_VimResidualBlock(self.mamba_config) for _ in range(depth)])
        if _CUDA_SCAN is not None:
            for layer in self.layers:
                layer.mixer.selective_scan_cuda = _CUDA_SCAN
        self.norm_f = RMSNorm(embed_dim, self.mamba_config.rms_norm_eps)

        self.domain_classifier = DomainClassifier(
            embed_dim, domain_hidden, domain_dropout, n_domains
        )
        self.register_buffer("center", torch.zeros(embed_dim))
        self._init_weights()

    @classmethod
    def from_config(
        cls,
        config: AuMConfig,
        n_mels: int,
        frames: int,
        model: ModelConfig | None = None,
        n_domains: int = 2,
    ) -> AudioMamba:
        """Build from the ``aum`` section; the domain classifier and GRL follow ``model``."""
        model = model or ModelConfig()
        return cls(
            n_mels=n_mels,
            frames=frames,
            patch=config.patch,
            embed_dim=config.embed_dim,
            depth=config.depth,
            d_state=config.d_state,
            domain_hidden=model.domain_hidden,
            domain_dropout=model.domain_dropout,
            grl_lambda=model.grl_lambda,
            n_domains=n_domains,
        )

    def _init_weights(self) -> None:
        # AuM/Vim initialization: lecun-normal patch projection, truncated-normal (0.02) class
        # token and positions, and each block's output projection scaled by 1/sqrt(depth) so
        # the residual stream's variance does not grow with depth (GPT-2 scheme).
        # lecun normal = normal truncated at 2 sigma, rescaled to unit variance (0.8796...).
        std = math.sqrt(1.0 / (self.patch * self.patch)) / 0.8796256610342398
        nn.init.trunc_normal_(self.patch_embed.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for layer in self.layers:
            weight = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            with torch.no_grad():
                weight /= math.sqrt(self.depth)

    @property
    def latent_dim(self) -> int:
        return self.embed_dim

    def _positions(self, grid: tuple[int, int]) -> Tensor:
        """Position embeddings for a patch grid, resampled when it differs from the built one."""
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        if grid != self.grid:
            g = grid_pos.reshape(1, self.grid[0], self.grid[1], -1).permute(0, 3, 1, 2)
            g = F.interpolate(g, size=grid, mode="bilinear", align_corners=False)
            grid_pos = g.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
        return torch.cat([cls_pos, grid_pos], dim=1)

    def tokens(self, x: Tensor) -> tuple[Tensor, int]:
        """Final-norm states of every token ``[B, N + 1, D]`` and the class token's index."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(
                f"expected [B, n_mels, frames] or [B, 1, n_mels, frames], got {tuple(x.shape)}"
            )
        grid = grid_shape(x.shape[-2], x.shape[-1], self.patch)
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D], frequency-major
        n = patches.shape[1]
        pos = self._positions(grid)
        cls_index = n // 2
        seq = torch.cat(
            [
                patches[:, :cls_index] + pos[:, 1 : 1 + cls_index],
                self.cls_token.expand(x.shape[0], -1, -1) + pos[:, :1],
                patches[:, cls_index:] + pos[:, 1 + cls_index :],
            ],
            dim=1,
        )
        self.mamba_config.use_cuda = bool(seq.is_cuda and _CUDA_SCAN is not None)
        for layer in self.layers:
            seq = layer(seq)
        return self.norm_f(seq), cls_index

    def encode(self, x: Tensor) -> Tensor:
        """Embedding ``z [B, D]``: the class token's final state."""
        states, cls_index = self.tokens(x)
        return states[:, cls_index]

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x)

    def domain_logits(self, z: Tensor, reverse: bool) -> Tensor:
        """Domain logits of ``z``; ``reverse=True`` inserts the GRL (the adversarial term)."""
        if reverse:
            z = grad_reverse(z, self.grl_lambda)
        return self.domain_classifier(z)

    def has_center(self) -> bool:
        """Whether the SVDD center has been set (``init_center`` leaves no zero component)."""
        return bool(torch.all(self.center != 0).item())
