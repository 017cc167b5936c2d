"""Data-parallel training: a real ``torchrun --nproc_per_node 2 -m harken train`` on CPU (gloo).

Design (docs/SPEED.md, "Multi-GPU and multi-node"):

* one single-process run and one 2-process DDP run train the same tiny model on the shared
  synthetic set with the same *global* batch (32; 16 per rank), epochs, epoch size and seed;
* the DDP run must write one model (rank 0 alone logs and writes; rank 1 prints nothing and
  both exit 0 after tearing the process group down), and continue with ``--resume``;
* the two models must score the synthetic test set "within noise".  The runs cannot agree bit
  for bit (per-rank crops, per-rank BatchNorm batches of 16 instead of 32, a different dropout
  stream), so "within noise" is what two single-process runs that differ only in their random
  stream show.  Measured on this set and config: test-score Spearman between such runs is
  above 0.98, and their AUC differs by less than the AUC's own bootstrap noise.  The
  thresholds are Spearman >= 0.9 and |AUC difference| no larger than the half-width of the
  95% bootstrap interval of the single-process AUC (with a floor of 0.05: with 72 test clips
  an AUC is uncertain to about +-0.07 anyway).  A DDP bug that matters (ranks training on the
  same draws, unsynchronised gradients, a center from one rank's data, scheduler drift)
  moves the model further than that or breaks the run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

OVERRIDES = [
    "train.epochs=2",
    "train.batch_size=32",  # global: 16 per rank under DDP
    "train.epoch_size=128",
    "train.seed=0",
    "train.device=cpu",
    "train.log_tensorboard=false",
    "window.frames=64",
    "window.test_hop=32",
    "model.channels=[8,16,16,32]",
    "model.latent_dim=32",
    "train.lr=1e-3",
]
TIMEOUT = 300


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _train_cmd(data: Path, out: Path, cache: Path, extra: list[str] | None = None) -> list[str]:
    return [
        "-m",
        "harken",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        "demo",
        "--cache",
        str(cache),
        "--no-progress",
        *OVERRIDES,
        *(extra or []),
    ]


def _torchrun(args: list[str], logs: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--log-dir",
        str(logs),
        "--redirects",
        "3",
        *args,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env(), check=False
    )


def _rank_logs(logs: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    for rank in (0, 1):
        files = sorted(logs.rglob(f"attempt_0/{rank}/std*.log"))
        out[rank] = "".join(f.read_text(errors="replace") for f in files)
    return out


@pytest.fixture(scope="module")
def runs(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("ddp")
    cache = base / "cache"
    from harken.config import load_config
    from harken.pipeline import discover_clips, train_run

    # the single-process reference, in this process (what `harken train` without torchrun does)
    train_run(
        load_config("demo", OVERRIDES),
        discover_clips(synth_root),
        base / "single",
        progress=False,
        cache_dir=cache,
    )
    ddp = _torchrun(_train_cmd(synth_root, base / "ddp", cache), base / "logs")
    return {
        "base": base,
        "cache": cache,
        "data": synth_root,
        "ddp": ddp,
        "logs": _rank_logs(base / "logs"),
    }


def _test_scores(run: Path, data: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    from harken.pipeline import discover_clips
    from harken.training.checkpoint import load_detector

    detector = load_detector(run)
    detector.cache_dir = cache
    test = [c for c in discover_clips(data) if c.split == "test"]
    scores = detector.score_clips(test).scores["reconstruction"]
    labels = np.array([c.label == "anomaly" for c in test], dtype=int)
    return scores, labels


def _auc_and_halfwidth(
    scores: np.ndarray, labels: np.ndarray, n: int = 1000, seed: int = 0
) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(labels, scores))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    boot = []
    # resample within each class (stratified), as harken.evaluation.bootstrap does
    for _ in range(n):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        boot.append(roc_auc_score(labels[idx], scores[idx]))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return auc, float(hi - lo) / 2


def test_ddp_run_exits_cleanly_and_only_rank0_writes(runs: dict[str, object]) -> None:
    ddp = runs["ddp"]
    assert isinstance(ddp, subprocess.CompletedProcess)
    logs = runs["logs"]
    assert isinstance(logs, dict)
    assert ddp.returncode == 0, (ddp.stderr[-2000:], logs)
    run = Path(str(runs["base"])) / "ddp"
    assert (run / "model.pt").is_file() and (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["all-last.pt"]
    rows = (run / "logs" / "all.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2  # header + one row per epoch, written once
    # rank 0 logs every epoch and the model; rank 1 logs nothing and raised nothing
    assert "epoch 2/2" in logs[0] and "wrote" in logs[0] and "model.pt" in logs[0]
    assert "Traceback" not in logs[0] + logs[1]
    assert "epoch" not in logs[1] and "wrote" not in logs[1]
    # the process group was torn down (torch warns at exit otherwise)
    assert "destroy_process_group" not in logs[0] + logs[1] + ddp.stderr


def test_ddp_model_scores_within_noise_of_single_process(runs: dict[str, object]) -> None:
    from scipy.stats import spearmanr

    base, data, cache = Path(str(runs["base"])), Path(str(runs["data"])), Path(str(runs["cache"]))
    single, labels = _test_scores(base / "single", data, cache)
    ddp, labels_ddp = _test_scores(base / "ddp", data, cache)
    assert np.array_equal(labels, labels_ddp)
    assert np.all(np.isfinite(single)) and np.all(np.isfinite(ddp))
    rho = spearmanr(single, ddp).statistic
    auc_single, half = _auc_and_halfwidth(single, labels)
    auc_ddp, _ = _auc_and_halfwidth(ddp, labels, n=1)
    assert rho >= 0.9, f"Spearman {rho:.4f} between single-process and DDP test scores"
    assert abs(auc_ddp - auc_single) <= max(half, 0.05), (auc_single, auc_ddp, half)


def test_ddp_resume_continues_the_run(runs: dict[str, object]) -> None:
    base = Path(str(runs["base"]))
    ddp = runs["ddp"]
    assert isinstance(ddp, subprocess.CompletedProcess) and ddp.returncode == 0
    before = (base / "ddp" / "model.pt").stat().st_mtime_ns
    resumed = _torchrun(
        [
            *_train_cmd(
                Path(str(runs["data"])), base / "ddp", Path(str(runs["cache"])), ["train.epochs=3"]
            ),
            "--resume",
        ],
        base / "logs-resume",
    )
    logs = _rank_logs(base / "logs-resume")
    assert resumed.returncode == 0, (resumed.stderr[-2000:], logs)
    assert "resumed" in logs[0] and "epoch 3/3" in logs[0]
    # finished epochs are not redone
    assert "epoch 1/3" not in logs[0] and "epoch 2/3" not in logs[0]
    rows = (base / "ddp" / "logs" / "all.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3
    assert (base / "ddp" / "model.pt").stat().st_mtime_ns > before


# --------------------------------------------------------------------------- rank invariants
# Two ranks started by hand (torchrun's environment variables, gloo) call train_cae on in-memory
# features; each reports a digest of its final state, its SVDD center and its losses.  The same
# job in the test process (no environment) gives the single-process reference.
@dataclass(frozen=True)
class _Clip:
    path: Path
    machine: str
    section: str
    domain: str
    split: str = "train"
    label: str = "normal"


def rank_job(out: str, overrides: list[str]) -> None:
    """Train on in-memory features and write the final state's digest, center and losses."""
    import hashlib

    import torch

    from harken.config import load_config
    from harken.training import distributed as D
    from harken.training.loop import train_cae

    if "RANK" in os.environ:
        torch.set_num_threads(1)
    config = load_config("demo", overrides)
    rng = np.random.default_rng(0)
    clips, feats = [], []
    for m in ("fan", "valve"):
        profile = np.linspace(-60, -20, 128)[:, None] * (1.0 if m == "fan" else 0.6)
        for i in range(12):
            clips.append(_Clip(Path(f"{m}_{i}.wav"), m, "00", "target" if i < 3 else "source"))
            feats.append((profile + rng.normal(0, 4, (128, 80))).astype(np.float32))
    result = train_cae(clips, feats, config, run_dir=None, progress=False)
    state = result.model.state_dict()
    digest = hashlib.sha256(
        b"".join(v.detach().cpu().numpy().tobytes() for v in state.values())
    ).hexdigest()
    record = {
        "digest": digest,
        "center": result.model.center.tolist(),
        "loss": [r["loss"] for r in result.history],
    }
    Path(out).write_text(json.dumps(record))
    D.teardown(D.current())


RANK_CMD = "import sys; sys.path.insert(0, sys.argv[1]); from test_ddp import rank_job; import json; rank_job(sys.argv[2], json.loads(sys.argv[3]))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_ranks_hold_one_model_and_the_global_center(tmp_path: Path) -> None:
    overrides = [o for o in OVERRIDES if not o.startswith("train.epoch")]
    overrides += [
        "train.epochs=2",
        "train.epoch_size=64",
        "train.val_fraction=0",
        "loss.center_eps=1e-9",
    ]
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = _env() | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        cmd = [
            sys.executable,
            "-c",
            RANK_CMD,
            str(Path(__file__).parent),
            str(tmp_path / f"rank{rank}.json"),
            json.dumps(overrides),
        ]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        rank_job(str(tmp_path / "single.json"), overrides)  # the single-process reference, here
    finally:
        errors = [proc.communicate(timeout=TIMEOUT)[1] for proc in procs]
    for proc, err in zip(procs, errors, strict=True):
        assert proc.returncode == 0, err[-3000:]
    r0, r1, ref = (
        json.loads((tmp_path / f"{n}.json").read_text()) for n in ("rank0", "rank1", "single")
    )
    # gradients are averaged and buffers broadcast: both ranks end with the very same model
    assert r0["digest"] == r1["digest"]
    # each rank trained on its own slice of every epoch: their local losses differ
    assert r0["loss"] != r1["loss"]
    # the SVDD center is the mean latent over *all* ranks' clips: the single-process center
    # (same initial weights, same clips) up to float32 summation order
    assert np.allclose(r0["center"], ref["center"], rtol=1e-4, atol=1e-6)
    assert np.allclose(r0["center"], r1["center"], rtol=0, atol=0)
    assert np.abs(np.asarray(ref["center"])).min() > 1e-6  # the eps guard did not mask anything
