"""Network and arithmetic of the DCASE 2023-2025 autoencoder baseline, mirrored from the
official code (nttcslab/dcase2023_task2_baseline_ae: ``datasets/loader_common.py``,
``networks/dcase2023t2_ae/network.py``, ``networks/criterion/mahala.py``,
``networks/dcase2023t2_ae/dcase2023t2_ae.py``).

What the official code does, and so what this module does:

* Features: ``20 / power * log10(max(mel, sys.float_info.epsilon))`` of a librosa mel
  spectrogram at the file's own rate, then ``n_frames`` consecutive frames concatenated (hop 1)
  into one vector, frame-major: element ``t * n_mels + m`` is mel bin ``m`` of frame ``t``
  (:func:`stack_frames`).  A clip of ``T`` frames gives ``T - n_frames + 1`` vectors.
* Network: every hidden layer, the 8-unit bottleneck included, is Linear + BatchNorm1d
  (momentum 0.01, eps 1e-3: the values of the original Keras baseline) + ReLU; only the output
  layer is a bare Linear (:class:`AENet`).
* Selective Mahalanobis: residuals are cut into ``n_mels``-dim blocks (one per stacked frame),
  one covariance per domain is estimated from training residuals, and a clip's score is the
  smaller of its two distances.  The official reduction is ``mean`` over the N x N matrix
  ``delta @ inv(cov) @ delta.T`` of the clip's N residual blocks, which equals the squared
  Mahalanobis norm of the clip's *mean* residual block (not the mean of per-block distances);
  :func:`mahalanobis_of_mean` computes it in that closed form.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

# The official network's BatchNorm settings (Keras defaults carried over from the 2020 baseline).
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


def stack_frames(logmel: Tensor, n_frames: int) -> Tensor:
    """``[n_mels, T]`` log-mel to ``[T - n_frames + 1, n_frames * n_mels]`` vectors.

    Frame-major layout as in the official ``file_to_vectors`` (vector block ``t`` holds frame
    ``start + t``), so that a vector viewed as ``[n_frames, n_mels]`` gives back the frames and
    the Mahalanobis blocks are single frames.  Fewer than ``n_frames`` frames give zero vectors.
    """
    if logmel.dim() != 2:
        raise ValueError(f"expected a [n_mels, frames] log-mel, got shape {tuple(logmel.shape)}")
    n_mels, total = logmel.shape
    if total < n_frames:
        return logmel.new_zeros((0, n_mels * n_frames))
    windows = logmel.unfold(1, n_frames, 1)  # [n_mels, n_vectors, n_frames]
    return windows.permute(1, 2, 0).reshape(-1, n_frames * n_mels)


class FrameBank:
    """All frames of many clips in one ``[total_frames, n_mels]`` tensor, gathered into vectors.

    Storing frames instead of stacked vectors keeps memory at 1/``n_frames`` of the official
    pickles (a DCASE machine type is ~1000 clips x 309 vectors x 640 values), and a vector
    never straddles two clips because only starts that leave room for ``n_frames`` frames
    inside their own clip are listed.
    """

    def __init__(self, logmels: list[np.ndarray] | list[Tensor], n_frames: int) -> None:
        if not logmels:
            raise ValueError("FrameBank needs at least one clip")
        self.n_frames = int(n_frames)
        frames: list[Tensor] = []
        starts: list[Tensor] = []
        owners: list[Tensor] = []
        offset = 0
        for i, mel in enumerate(logmels):
            # A copy: cache entries arrive as read-only memory maps.
            t = (
                torch.as_tensor(np.array(mel, dtype=np.float32))
                if isinstance(mel, np.ndarray)
                else mel
            )
            t = t.to(torch.float32)
            n_vec = t.shape[1] - self.n_frames + 1
            frames.append(t.T.contiguous())
            if n_vec > 0:
                starts.append(torch.arange(offset, offset + n_vec))
                owners.append(torch.full((n_vec,), i, dtype=torch.long))
            offset += t.shape[1]
        self.frames = torch.cat(frames)  # [total_frames, n_mels]
        self.n_mels = int(self.frames.shape[1])
        self.starts = torch.cat(starts) if starts else torch.zeros(0, dtype=torch.long)
        #: index of the clip each vector comes from
        self.owner = torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long)
        self._steps = torch.arange(self.n_frames)

    def __len__(self) -> int:
        return int(self.starts.numel())

    @property
    def dim(self) -> int:
        return self.n_frames * self.n_mels

    def vectors(self, index: Tensor) -> Tensor:
        """Vectors number ``index`` (a 1-D LongTensor), ``[len(index), n_frames * n_mels]``."""
        rows = self.starts[index][:, None] + self._steps[None, :]
        return self.frames[rows].reshape(len(index), self.dim)


class AENet(nn.Module):
    """The baseline's fully connected autoencoder: 640-128-128-128-128-8-128-128-128-128-640.

    Returns ``(reconstruction, bottleneck)`` like the official ``AENet.forward``.
    """

    def __init__(
        self, input_dim: int = 640, hidden: int = 128, bottleneck: int = 8, n_hidden: int = 4
    ) -> None:
        super().__init__()
        self.input_dim = int(input_dim)

        def layer(n_in: int, n_out: int) -> list[nn.Module]:
            return [
                nn.Linear(n_in, n_out),
                nn.BatchNorm1d(n_out, momentum=BN_MOMENTUM, eps=BN_EPS),
                nn.ReLU(),
            ]

        enc: list[nn.Module] = []
        width = self.input_dim
        for _ in range(n_hidden):
            enc += layer(width, hidden)
            width = hidden
        # The official bottleneck is a full hidden layer too (BatchNorm and ReLU on the code).
        enc += layer(hidden, bottleneck)
        dec: list[nn.Module] = layer(bottleneck, hidden)
        for _ in range(n_hidden - 1):
            dec += layer(hidden, hidden)
        dec.append(nn.Linear(hidden, self.input_dim))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder(x.reshape(-1, self.input_dim))
        return self.decoder(z), z


class CovarianceAccumulator:
    """Streaming sample covariance (``ddof=1``) of rows, in float64.

    Training residuals of a whole machine type do not fit in memory as one matrix at DCASE
    scale, so sums are accumulated batch by batch.  Unlike the official code, which subtracts
    each batch's own mean before accumulating, this centers on the global mean: the result is
    exactly ``numpy.cov(rows, rowvar=False)`` of all rows.
    """

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)
        self.n = 0
        self._sum = torch.zeros(self.dim, dtype=torch.float64)
        self._outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    def update(self, rows: Tensor) -> None:
        rows = rows.detach().reshape(-1, self.dim).to("cpu", torch.float64)
        self.n += int(rows.shape[0])
        self._sum += rows.sum(0)
        self._outer += rows.T @ rows

    def covariance(self) -> Tensor:
        if self.n < 2:
            raise ValueError(f"need at least 2 rows for a covariance, got {self.n}")
        mean = self._sum / self.n
        cov = (self._outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return (cov + cov.T) / 2  # exact symmetry despite rounding


def precision_matrix(cov: Tensor) -> Tensor:
    """Inverse covariance in float64; the pseudo-inverse where the covariance is singular.

    The official code calls ``torch.inverse`` in float32; a singular matrix (fewer residual
    blocks than dimensions, a dead mel band) would make that raise, so fall back to ``pinv``.
    """
    cov = cov.to(torch.float64)
    try:
        inv = torch.linalg.inv(cov)
    except RuntimeError:
        return torch.linalg.pinv(cov, hermitian=True)
    if not torch.isfinite(inv).all():
        return torch.linalg.pinv(cov, hermitian=True)
    return inv


def mahalanobis_of_mean(residual: Tensor, precision: Tensor, block: int) -> Tensor:
    """The official per-clip Mahalanobis score: ``mean_ij(delta_i P delta_j)`` over blocks.

    ``delta`` are the clip's residual blocks (``recon - x``; the sign does not matter) viewed
    as ``[-1, block]``.  The mean over all pairs (i, j) is ``mean(delta) @ P @ mean(delta)``,
    computed that way: O(N) instead of the official O(N^2) matrix.
    """
    delta = residual.reshape(-1, block).to(torch.float64).mean(0)
    return delta @ precision.to(device=delta.device, dtype=torch.float64) @ delta


def selective_mahalanobis(
    residual: Tensor, prec_source: Tensor, prec_target: Tensor, block: int
) -> Tensor:
    """Smaller of the source- and target-covariance scores (the official ``min(...)``): a clip
    is judged against whichever domain's residual distribution it fits better."""
    return torch.minimum(
        mahalanobis_of_mean(residual, prec_source, block),
        mahalanobis_of_mean(residual, prec_target, block),
    )
