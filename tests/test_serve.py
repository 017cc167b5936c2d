"""``harken serve``: a real uvicorn server on 127.0.0.1, a real HTTP client (httpx).

Covers the model card, a scored upload against the Python API's score for the same file,
16 concurrent clients (results not mixed up, requests batched), every refusal with its code,
and a good request after all the bad ones.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

import test_api
from harken.api import AnomalyDetector, load_run
from harken.data.dataset import discover
from harken.deploy.serve import Limits, RequestError, Service, serve_in_thread

feature_cache = test_api.feature_cache
field_run = test_api.field_run
MAX_BODY = 1 << 20  # 1 MiB: a 2-s 16-bit clip is 64 kB
MAX_SECONDS = 5.0


@pytest.fixture(scope="module")
def server(field_run: Path) -> Iterator[tuple[str, Service]]:
    service = Service(
        load_run(field_run),
        model_path=field_run,
        limits=Limits(max_body_bytes=MAX_BODY, max_seconds=MAX_SECONDS),
        max_batch=16,
        max_wait_ms=20.0,
    )
    uv, thread, port = serve_in_thread(service)
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def test_clips(synth_root: Path) -> list[Any]:
    return [c for c in discover(synth_root) if c.split == "test"]


def wav(samples: np.ndarray, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, subtype=subtype, format=fmt)
    return buf.getvalue()


def post(base: str, data: bytes, name: str = "clip.wav", **fields: str) -> httpx.Response:
    return httpx.post(f"{base}/score", files={"file": (name, data, "audio/wav")}, data=fields, timeout=120)


def test_health_and_model_card(server: tuple[str, Service], field_run: Path) -> None:
    base, _ = server
    health = httpx.get(f"{base}/health").json()
    assert health["status"] == "ok"
    card = httpx.get(f"{base}/model").json()
    detector = load_run(field_run)
    assert card["system"] == "cae-dann" and card["score_kind"] == "mahalanobis"
    assert card["thresholds"] == detector.threshold_
    assert card["machine_types"] == ["fan", "gearbox", "valve"]
    assert card["model_version"] == hashlib.sha256((field_run / "model.pt").read_bytes()).hexdigest()[:12]
    assert card["config"]["window"]["frames"] == 64 and card["limits"]["max_seconds"] == MAX_SECONDS
    assert card["training"]["epochs_run"] == 1 and "torch_trained" in card["versions"]


def test_scored_upload_matches_the_api(server: tuple[str, Service], field_run: Path, test_clips: list[Any]) -> None:
    base, _ = server
    clip = next(c for c in test_clips if c.machine == "gearbox")
    r = post(base, clip.path.read_bytes(), name=clip.path.name, machine="gearbox")
    assert r.status_code == 200, r.text
    body = r.json()
    (want,) = AnomalyDetector.load(field_run).score_details([clip])
    thresholds = load_run(field_run).threshold_
    assert body["score"] == pytest.approx(want.score, rel=1e-6)
    assert (body["machine"], body["section"], body["threshold_key"]) == ("gearbox", "00", "gearbox/00")
    assert body["threshold"] == thresholds["gearbox/00"] and body["decision"] == int(body["score"] > body["threshold"])
    starts = [w["start_s"] for w in body["timeline"]]
    np.testing.assert_allclose(starts, test_api.expected_starts(32000))
    assert body["score"] == pytest.approx(np.mean([w["score"] for w in body["timeline"]]), rel=1e-9)
    assert set(body["timing_ms"]) == {"read", "decode", "features", "queue_and_score", "total"}
    assert body["model_version"] == httpx.get(f"{base}/health").json()["model_version"]

    # the section comes from a form field, else the DCASE name, else 00; no machine: global threshold
    odd = post(base, clip.path.read_bytes(), name="x.wav", machine="gearbox", section="3").json()
    assert (odd["section"], odd["threshold_key"], odd["threshold"]) == ("03", "*", thresholds["*"])
    anon = post(base, clip.path.read_bytes(), name="x.wav").json()
    assert (anon["machine"], anon["threshold_key"]) == (None, "*")
    # one generalized model, but the mahalanobis statistics are per machine type and section:
    # both unknown groups use the global ("*") ones
    assert anon["score"] == pytest.approx(odd["score"], rel=1e-6)


def test_concurrent_requests_are_batched_and_not_mixed_up(server: tuple[str, Service], field_run: Path, test_clips: list[Any]) -> None:
    base, service = server
    clips = test_clips[::4][:16]
    want = {str(c.path): s for c, s in zip(clips, AnomalyDetector.load(field_run).decision_function(clips), strict=True)}
    batches_before = service.batcher.batches
    responses: dict[str, httpx.Response] = {}
    barrier = threading.Barrier(len(clips))

    def client(c: Any) -> None:
        data = c.path.read_bytes()
        barrier.wait()
        responses[str(c.path)] = post(base, data, name=c.path.name, machine=c.machine)

    threads = [threading.Thread(target=client, args=(c,)) for c in clips]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(responses) == 16 and all(r.status_code == 200 for r in responses.values())
    for path, r in responses.items():
        assert r.json()["score"] == pytest.approx(want[path], rel=1e-6)
    assert max(r.json()["batch_size"] for r in responses.values()) > 1
    assert service.batcher.batches - batches_before < 16


def test_every_refusal_then_a_good_request(server: tuple[str, Service], test_clips: list[Any]) -> None:
    base, service = server
    good = test_clips[0].path.read_bytes()
    refused_before = service.refused
    noise = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    with_nan = noise.copy()
    with_nan[100] = np.nan

    def chunked() -> Iterator[bytes]:
        for _ in range(20):
            yield b"\0" * (64 * 1024)

    cases = [
        (post(base, b"\0" * (MAX_BODY + 1)), 413, "body_too_large"),
        (httpx.post(f"{base}/score", content=chunked(), headers={"content-type": "multipart/form-data; boundary=x"}), 413, "body_too_large"),
        (post(base, wav(np.zeros(int(16000 * (MAX_SECONDS + 1)), np.float32))), 413, "audio_too_long"),
        (httpx.post(f"{base}/score", json={"file": "x.wav"}), 415, "unsupported_media_type"),
        (post(base, b"<html>this is not audio</html>"), 415, "unsupported_format"),
        (post(base, wav(noise, fmt="AIFF")), 415, "unsupported_format"),
        (post(base, b""), 400, "empty_file"),
        (httpx.post(f"{base}/score", files={"other": ("a.wav", good)}), 400, "missing_file"),
        (post(base, good, section="x1"), 400, "bad_section"),
        (post(base, good, machine="../../etc/passwd"), 400, "bad_machine"),
        (httpx.post(f"{base}/score", content=b"garbage", headers={"content-type": "multipart/form-data"}), 400, "bad_form"),
        (post(base, good[: len(good) // 2]), 422, "bad_audio"),  # truncated: header promises more
        (post(base, wav(with_nan, subtype="FLOAT")), 422, "bad_audio"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (code, response.text)
        body = response.json()
        assert body["error"] == code and body["detail"]
    assert "truncated" in cases[-2][0].json()["detail"]
    assert service.refused - refused_before == len(cases)
    after = post(base, good, name=test_clips[0].path.name, machine="fan")
    assert after.status_code == 200 and np.isfinite(after.json()["score"])
    assert httpx.get(f"{base}/health").json()["status"] == "ok"


def test_per_machine_run_needs_the_machine_field(field_run: Path) -> None:
    detector = load_run(field_run)
    detector.models = {"fan": detector.models["all"], "valve": detector.models["all"]}
    service = Service(detector)
    with pytest.raises(RequestError) as info:
        service.clip_for(None, None, "x.wav")
    assert info.value.status == 422 and info.value.code == "machine_required"
    assert service.clip_for("valve", None, "section_02_0001.wav").section == "02"
