"""Model files from elsewhere: no code runs from them, and damage is a clear CheckpointError.

Checkpoints load with ``torch.load(weights_only=True)`` (src/harken/training/checkpoint.py), so
a pickle that would call ``os.system`` is refused before anything runs; format-2 files carry a
digest of their contents, so flipped or cut bytes are refused instead of loading a different
model.  Every refusal names the file, in the Python API and in each command that takes a model
(``harken test``, ``harken score``, ``harken serve``, ``harken train --resume``).
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import random
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from harken.cli import main
from harken.config import load_config
from harken.errors import CheckpointError, ConfigError, HarkenWarning
from harken.features.scaling import Scaler
from harken.systems import create_system
from harken.systems.cae_dann.torch_model import CAEDANN
from harken.training.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    load_checkpoint,
    load_detector,
    save_checkpoint,
    save_detector,
)
from harken.training.loop import model_args

SRC = Path(__file__).resolve().parents[1] / "src" / "harken"
TINY = [
    "window.frames=32",
    "model.channels=[4,8]",
    "model.latent_dim=8",
    "model.domain_hidden=8",
    "features.n_mels=32",
    "train.device=cpu",
    "score.backend=torch",
]


UNPICKLERS = (
    "pickle.load",
    "pickle.loads",
    "cloudpickle.load",
    "joblib.load",
    "yaml.load",
    "yaml.unsafe_load",
)


# ----------------------------------------------------------------------------- fixtures
def _detector():  # noqa: ANN202 - a CAEDANNSystem
    """A fitted-looking CAE-DANN detector without training (random weights, fixed scaling)."""
    config = load_config("demo", TINY)
    detector = create_system("cae-dann", config)
    torch.manual_seed(0)
    detector.models = {"all": CAEDANN(**model_args(config)).eval()}
    spec = np.random.default_rng(0).normal(-40.0, 10.0, (32, 200)).astype(np.float32)
    detector.scalers = {"all": Scaler.fit([spec], config.scaling)}
    detector.threshold_ = {"*": 0.5, "fan/00": 0.4}
    detector.score_stats_ = {"*": {"reconstruction": [0.1, 0.01], "svdd": [1.0, 0.1]}}
    return detector


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_detector(path, _detector())
    return path


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import soundfile as sf

    path = tmp_path_factory.mktemp("audio") / "clip.wav"
    sf.write(path, np.random.default_rng(1).normal(0, 0.1, 16000).astype(np.float32), 16000)
    return path


def weights(detector) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return detector.models["all"].state_dict()


def error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"harken {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def refused_everywhere(
    path: Path, fragment: str, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API and every command that takes a model refuse ``path`` naming it, no traceback."""
    with pytest.raises(CheckpointError) as err:
        load_detector(path)
    assert str(path) in str(err.value) and fragment in str(err.value), err.value
    from harken.api import load_run

    with pytest.raises(CheckpointError):
        load_run(path)
    commands = {
        "test": ["test", "--run", str(path), "--data", str(wav.parent), "--bootstrap", "0"],
        "score": ["score", "--run", str(path), "--machine", "fan", str(wav)],
        "serve": ["serve", "--run", str(path), "--port", "1"],
    }
    for command, argv in commands.items():
        capsys.readouterr()
        assert main(argv) == 1, command
        line = error_line(capsys.readouterr().err, command)
        assert str(path) in line and fragment in line, (command, line)


# ----------------------------------------------------------------------------- the good file
def test_a_harken_model_file_round_trips(model_file: Path) -> None:
    detector = load_detector(model_file)
    for key, value in weights(_detector()).items():
        assert torch.equal(weights(detector)[key], value), key
    data = load_checkpoint(model_file, kind="detector")
    assert data["format"] == FORMAT and data["format_version"] == FORMAT_VERSION
    assert isinstance(data["digest"], str) and len(data["digest"]) == 32


def test_every_torch_load_is_weights_only_and_nothing_else_unpickles() -> None:
    """Static check of src/harken: the one loader of model files cannot run code."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            unsafe_load = name == "torch.load" and keywords.get("weights_only") != "True"
            unpickles = name in UNPICKLERS or (
                name in ("np.load", "numpy.load")
                and keywords.get("allow_pickle", "False") != "False"
            )
            if unsafe_load or unpickles:
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not offenders, offenders


# ----------------------------------------------------------------------------- malicious files
class _Touch:
    """Unpickling this calls ``os.system('touch MARKER')``: what an attack would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _malicious(tmp_path: Path, how: str) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "detector",
        "detector": _Touch(marker),
    }
    if how == "zip":  # what torch.save writes
        torch.save(payload, path)
    elif how == "legacy":  # torch's pre-1.6 (non-zip) serialization
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle named model.pt
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path, marker


@pytest.mark.parametrize("how", ["zip", "legacy", "raw-pickle"])
def test_a_malicious_pickle_is_refused_and_runs_nothing(
    how: str, tmp_path: Path, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, marker = _malicious(tmp_path, how)
    refused_everywhere(path, "refused by the weights-only loader", wav, capsys)
    assert not marker.exists()  # no code ran, in any of the paths above
    # the payload is live: a plain (unsafe) load does run it, which is what the refusal prevents
    if how != "raw-pickle":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())  # noqa: S301 - on purpose
    assert marker.exists()


def test_resume_from_a_malicious_training_checkpoint_runs_nothing(
    tmp_path: Path, tiny_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    ckpt, marker = _malicious(tmp_path, "zip")
    (run / "checkpoints").mkdir(parents=True)
    target = run / "checkpoints" / "all-last.pt"
    ckpt.rename(target)
    argv = [
        "train",
        "--data",
        str(tiny_root),
        "--out",
        str(run),
        "--config",
        "demo",
        "--resume",
        "--no-progress",
        "--cache",
        str(tmp_path / "cache"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HarkenWarning)
        rc = main(
            [
                *argv,
                *TINY,
                "train.epochs=1",
                "train.epoch_size=16",
                "train.batch_size=8",
                "train.log_tensorboard=false",
            ]
        )
    assert rc == 1
    line = error_line(capsys.readouterr().err, "train")
    assert str(target) in line and "refused by the weights-only loader" in line
    assert not marker.exists()
    assert not (run / "model.pt").exists()


# ----------------------------------------------------------------------------- damaged files
def test_flipped_bytes_are_refused_or_change_nothing(model_file: Path, tmp_path: Path) -> None:
    """Any single flipped bit either is refused or lands where it changes nothing (zip padding)."""
    data = model_file.read_bytes()
    reference = load_checkpoint(model_file)
    rng = random.Random(20240501)
    refused = 0
    for _ in range(60):
        damaged = bytearray(data)
        pos = rng.randrange(len(damaged))
        damaged[pos] ^= 1 << rng.randrange(8)
        path = tmp_path / "flipped.pt"
        path.write_bytes(bytes(damaged))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as err:
            assert str(path) in str(err)
            refused += 1
            continue
        assert loaded["digest"] == reference["digest"]  # checked against the contents on load
    assert refused >= 40  # most of the file is contents: most flips must be caught


def test_a_flipped_weight_is_refused_by_the_digest(
    model_file: Path, tmp_path: Path, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flip one bit inside a tensor's bytes: torch loads it happily, harken does not."""
    import zipfile

    with zipfile.ZipFile(model_file) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(model_file.read_bytes())
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len  # the stored (uncompressed) tensor bytes
    data[start + info.file_size // 2] ^= 0x01
    path = tmp_path / "model.pt"
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself sees nothing wrong
    refused_everywhere(path, "do not match their checksum", wav, capsys)


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_a_truncated_model_file_is_refused(keep: float, model_file: Path, tmp_path: Path) -> None:
    data = model_file.read_bytes()
    path = tmp_path / "model.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as err:
        load_detector(path)
    assert str(path) in str(err.value)


def test_a_removed_digest_is_refused(model_file: Path, tmp_path: Path) -> None:
    data = torch.load(model_file, weights_only=True)
    del data["digest"]
    path = tmp_path / "model.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="do not match their checksum"):
        load_detector(path)


def test_an_edited_value_is_refused(model_file: Path, tmp_path: Path) -> None:
    data = torch.load(model_file, weights_only=True)
    data["detector"]["threshold"]["fan/00"] = 99.0  # a plain number edited, tensors untouched
    path = tmp_path / "model.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="do not match their checksum"):
        load_detector(path)


# ----------------------------------------------------------------------------- foreign files
def _foreign(kind: str, path: Path, model_file: Path) -> str:
    """Write a ``kind`` of non-harken file to ``path``; return what the error says."""
    if kind == "state_dict":  # a plain torch.save of weights
        torch.save(CAEDANN(n_mels=32, frames=32, channels=[4, 8], latent_dim=8).state_dict(), path)
        return "missing format header"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
        return "not a readable harken checkpoint"
    if kind == "empty":
        path.write_bytes(b"")
        return "not a readable harken checkpoint"
    if kind == "text":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
        return "not a readable harken checkpoint"
    if kind == "npy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path.with_suffix(".npy").rename(path)
        return "not a readable harken checkpoint"
    if kind == "training checkpoint":
        save_checkpoint(path, {"training": {"epoch": 0}}, kind="training")
        return "expected a 'detector' checkpoint, found 'training'"
    if kind == "newer format":
        data = torch.load(model_file, weights_only=True)
        data["format_version"] = FORMAT_VERSION + 1
        torch.save(data, path)
        return "is newer than this harken understands"
    if kind == "contents that do not rebuild":
        save_checkpoint(path, {"detector": {"system": "cae-dann", "config": {}}}, kind="detector")
        return "checkpoint contents do not rebuild a model"
    if kind == "unknown system":
        data = load_checkpoint(model_file)
        payload = {
            k: v
            for k, v in data.items()
            if k not in ("format", "format_version", "kind", "versions", "digest")
        }
        payload["detector"]["system"] = "no-such-system"
        save_checkpoint(path, payload, kind="detector")
        return "checkpoint contents do not rebuild a model"
    if kind == "missing":
        return "no checkpoint file here"
    if kind == "folder without model.pt":
        path.mkdir()
        return "no checkpoint file here"
    raise ValueError(kind)


FOREIGN = [
    "state_dict",
    "random bytes",
    "empty",
    "text",
    "npy",
    "training checkpoint",
    "newer format",
    "contents that do not rebuild",
    "unknown system",
    "missing",
    "folder without model.pt",
]


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_foreign_file_is_a_checkpoint_error_naming_it(
    kind: str, model_file: Path, tmp_path: Path, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.pt"
    fragment = _foreign(kind, path, model_file)
    named = path / "model.pt" if kind == "folder without model.pt" else path
    with pytest.raises(CheckpointError) as err:
        load_detector(path)
    assert str(named) in str(err.value) and fragment in str(err.value), err.value
    capsys.readouterr()
    assert main(["score", "--run", str(path), "--machine", "fan", str(wav)]) == 1
    line = error_line(capsys.readouterr().err, "score")
    assert str(named) in line and fragment in line


# ----------------------------------------------------------------------------- ONNX models
def _tiny_onnx(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("garbage model", "onnxruntime cannot load the model"),
        ("no sidecar", "no metadata sidecar"),
        ("sidecar not JSON", "not valid JSON"),
        ("sidecar of something else", "not harken export metadata"),
        ("sidecar a list", "not harken export metadata"),
        ("sidecar missing fields", "incomplete or malformed (no field 'audio')"),
    ],
)
def test_a_broken_onnx_model_is_a_clear_error(
    case: str, fragment: str, tmp_path: Path, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    model = tmp_path / "model.onnx"
    sidecar = tmp_path / "model.onnx.json"
    if case == "garbage model":
        model.write_bytes(b"\x08\x07garbage" * 50)
    else:
        _tiny_onnx(model)
    texts = {
        "garbage model": json.dumps({"format": "harken-onnx"}),
        "sidecar not JSON": '{"format": "harken-onnx", ',
        "sidecar of something else": json.dumps({"format": "other"}),
        "sidecar a list": json.dumps(["harken-onnx"]),
        "sidecar missing fields": json.dumps({"format": "harken-onnx"}),
    }
    if case in texts:
        sidecar.write_text(texts[case])
    capsys.readouterr()
    assert main(["score", "--onnx", str(model), str(wav)]) == 1
    line = error_line(capsys.readouterr().err, "score")
    assert str(model) in line and fragment in line, line
    from harken.deploy.onnx_runtime import OnnxScorer

    with pytest.raises(ConfigError, match="model.onnx"):
        OnnxScorer(model)


# ----------------------------------------------------------------------------- data for --resume
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harken.data.synth import synthesize

    root = tmp_path_factory.mktemp("tiny") / "data"
    return synthesize(
        root,
        machines=["fan"],
        n_train_source=4,
        n_train_target=2,
        n_test=1,
        duration=1.0,
        progress=False,
    )


def test_a_damaged_training_checkpoint_stops_resume_naming_it(
    tmp_path: Path, tiny_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    target = run / "checkpoints" / "all-last.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(io.BytesIO(b"PK\x03\x04" + bytes(100)).getvalue())
    argv = [
        "train",
        "--data",
        str(tiny_root),
        "--out",
        str(run),
        "--config",
        "demo",
        "--resume",
        "--no-progress",
        "--cache",
        str(tmp_path / "cache"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HarkenWarning)
        rc = main(
            [
                *argv,
                *TINY,
                "train.epochs=1",
                "train.epoch_size=16",
                "train.batch_size=8",
                "train.log_tensorboard=false",
            ]
        )
    assert rc == 1
    line = error_line(capsys.readouterr().err, "train")
    assert str(target) in line and "not a readable harken checkpoint" in line
    assert not (run / "model.pt").exists()
