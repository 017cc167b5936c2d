"""``harken serve --run RUN``: a trained run behind HTTP (FastAPI + uvicorn).

Endpoints:

* ``POST /score`` - multipart upload, file field ``file`` (WAV or FLAC), optional form fields
  ``machine`` and ``section``.  Returns score, decision, threshold, machine type, section,
  model version, timings and the window timeline as JSON.
* ``GET /health`` - liveness and counters.
* ``GET /model`` - the model card: system, config summary, thresholds, machine types,
  library versions, training summary, limits.

**Batching.**  Each request decodes its upload and computes its log-mel in a thread pool, then
queues the spectrogram.  One worker task takes the first queued request, collects more for up
to ``max_wait_ms`` or ``max_batch`` requests, and scores all their windows in one call into the
model (:func:`harken.api.score_spectrograms`, the path ``harken score`` uses) on a dedicated
thread.  While a batch is being scored, new requests queue up and form the next batch, so
under concurrency the per-call overhead is shared and throughput grows with the number of
clients; a lone client waits at most ``max_wait_ms`` more.

**Limits and errors.**  A body over ``max_body_bytes`` is refused with 413 before it is read
(Content-Length) or as soon as it passes the limit (chunked uploads); audio longer than
``max_seconds`` is refused with 413 from its header, before decoding.  A request that is not
``multipart/form-data``, or a file libsndfile cannot identify or that is not WAV/FLAC, gets
415; a missing or empty file, a malformed form or a bad ``section`` 400; audio that is
corrupt, truncated, holds NaN, or is too short under ``window.short_clip="error"`` 422; a
machine type the request must name 422.  Every error is JSON ``{"error": code, "detail":
reason}``.  Uploads are parsed in memory: nothing from a request is used as a file path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

import harken
from harken.deploy import ClipScore, FieldClip, error_text, normalize_section
from harken.errors import AudioError, ConfigError, HarkenError

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_MB = 20.0
DEFAULT_MAX_SECONDS = 120.0
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_WAIT_MS = 5.0
#: libsndfile container names accepted (WAV and its 64-bit / extensible variants, FLAC)
ACCEPTED_FORMATS = ("WAV", "WAVEX", "RF64", "W64", "FLAC")


@dataclass
class Limits:
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 1024 * 1024)
    max_seconds: float = DEFAULT_MAX_SECONDS


class RequestError(Exception):
    """A request the service refuses: HTTP status, short code and reason for the JSON body."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


# ----------------------------------------------------------------------------- batching
@dataclass
class _Item:
    clip: FieldClip
    spec: np.ndarray
    duration: float


class Batcher:
    """An asyncio queue and one worker that scores queued requests together.

    ``score_batch`` runs on a single dedicated thread (the model is used by one thread at a
    time, and the event loop stays free to accept requests meanwhile).  A failing batch fails
    only its own requests; the worker keeps running.
    """

    def __init__(
        self,
        score_batch: Callable[[list[_Item]], list[ClipScore]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max batch must be at least 1, got {max_batch}")
        self.score_batch = score_batch
        self.max_batch = int(max_batch)
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.queue: asyncio.Queue[tuple[_Item, asyncio.Future[tuple[ClipScore, int]]]] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="harken-score")
        self.task: asyncio.Task[None] | None = None
        self.batches = 0
        self.largest_batch = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._work(), name="harken-batcher")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> int:
        return 0 if self.queue is None else self.queue.qsize()

    async def submit(self, item: _Item) -> tuple[ClipScore, int]:
        """The item's result and the size of the batch it was scored in."""
        assert self.queue is not None, "Batcher.start() was not called"
        future: asyncio.Future[tuple[ClipScore, int]] = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _work(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.done()]
            if not live:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.score_batch, [item for item, _ in live])
            except Exception as exc:  # noqa: BLE001 - reported to the batch's requests, worker goes on
                log.exception("scoring a batch of %d failed", len(live))
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result((result, len(live)))


# ----------------------------------------------------------------------------- the service
class Service:
    """A loaded run and everything the endpoints need (model card, limits, pools, counters)."""

    def __init__(
        self,
        detector: Any,
        *,
        model_path: str | Path | None = None,
        limits: Limits | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        workers: int | None = None,
    ) -> None:
        from harken.api import supports_waveforms

        if not supports_waveforms(detector):
            raise ConfigError(f"system {detector.name!r} cannot score in-memory audio; harken serve needs cae-dann")
        self.detector = detector
        self.limits = limits or Limits()
        self.model_path = None if model_path is None else Path(model_path)
        file = self.model_path / "model.pt" if self.model_path is not None and self.model_path.is_dir() else self.model_path
        self.model_version = _file_digest(file) if file is not None and file.is_file() else "in-memory"
        self.versions = _versions(file)
        self.batcher = Batcher(self._score_batch, max_batch=max_batch, max_wait_ms=max_wait_ms)
        self.pool = ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1), thread_name_prefix="harken-decode")
        self.machines = sorted({k.split("/")[0] for k in detector.threshold_ if "/" in k})
        self.started = time.time()
        self.served = 0
        self.refused = 0

    # ------------------------------------------------------------------ work
    def _score_batch(self, items: list[_Item]) -> list[ClipScore]:
        from harken.api import score_spectrograms

        return score_spectrograms(
            self.detector, [i.clip for i in items], [i.spec for i in items], [i.duration for i in items]
        )

    def decode(self, data: bytes, name: str) -> tuple[np.ndarray, float]:
        """Samples of an upload after the format and duration checks (runs in the pool)."""
        import soundfile as sf

        from harken.data.audio import load_audio_bytes

        try:
            info = sf.info(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - libsndfile's errors for unknown content vary
            reason = str(exc).rsplit(": ", 1)[-1].strip() or type(exc).__name__  # drop "<BytesIO at 0x..>"
            raise RequestError(415, "unsupported_format", f"not a WAV or FLAC file libsndfile can read ({reason})") from None
        if info.format not in ACCEPTED_FORMATS:
            raise RequestError(415, "unsupported_format", f"{info.format} audio is not accepted; send WAV or FLAC")
        if info.samplerate > 0 and info.frames / info.samplerate > self.limits.max_seconds:
            raise RequestError(
                413, "audio_too_long",
                f"{info.frames / info.samplerate:.1f} s of audio is over this service's limit of {self.limits.max_seconds:g} s",
            )  # fmt: skip
        try:
            wave = load_audio_bytes(data, self.detector.config.audio, name=name)
        except AudioError as exc:
            raise RequestError(422, "bad_audio", error_text(exc)) from None
        return wave, len(wave) / self.detector.config.audio.sample_rate

    def warmup(self) -> None:
        """Score one silent window before serving, so the first client does not pay for
        lazy initialisation (kernels, buffers) with seconds of latency."""
        config = self.detector.config
        n = (config.window.frames + 1) * config.features.hop_length
        spec = self.features(np.zeros(n, dtype=np.float32))
        self._score_batch([_Item(FieldClip(None, self.machines[0] if self.machines else "*", "00", "warmup"), spec, 0.0)])

    def features(self, wave: np.ndarray) -> np.ndarray:
        from harken.api import features

        return features(self.detector, [wave])[0]

    def clip_for(self, machine: str | None, section: str | None, filename: str) -> FieldClip:
        """What the upload is scored as: the form fields, else what the model and name allow."""
        try:
            sec = normalize_section(section) if section not in (None, "") else None
        except ConfigError as exc:
            raise RequestError(400, "bad_section", str(exc)) from None
        if sec is None:
            sec = _section_from_name(filename) or "00"
        if machine in (None, ""):
            if len(self.machines) == 1:
                machine = self.machines[0]
            elif getattr(self.detector, "models", None) and "all" not in self.detector.models:
                raise RequestError(
                    422, "machine_required",
                    f"this run has one model per machine type; send the form field 'machine' (one of {', '.join(self.machines)})",
                )  # fmt: skip
            else:
                machine = "*"  # the generalized model and the global threshold
        if len(machine) > 200 or any(ch in machine for ch in "/\\\x00"):
            raise RequestError(400, "bad_machine", "machine must be a plain name (no slashes), at most 200 characters")
        return FieldClip(None, machine, sec, filename)

    # ------------------------------------------------------------------ model card
    def model_card(self) -> dict[str, Any]:
        config = self.detector.config
        history = list(self.detector.history_)
        last = history[-1] if history else {}
        sections: dict[str, list[str]] = {}
        for key in self.detector.threshold_:
            if "/" in key:
                m, s = key.split("/", 1)
                sections.setdefault(m, []).append(s)
        return {
            "system": self.detector.name,
            "model_version": self.model_version,
            "model_path": str(self.model_path) if self.model_path else None,
            "score_kind": self.detector.decision_kind,
            "config": {
                "sample_rate": config.audio.sample_rate,
                "channel": f"{config.audio.channel}:{config.audio.channel_index}",
                "features": {k: getattr(config.features, k) for k in ("n_fft", "hop_length", "n_mels", "cache_dtype")},
                "window": {k: getattr(config.window, k) for k in ("frames", "test_hop", "aggregate", "short_clip")},
                "train": {k: getattr(config.train, k) for k in ("setting", "epochs", "batch_size", "lr", "seed")},
                "threshold_quantile": config.score.threshold_quantile,
            },
            "thresholds": {k: float(v) for k, v in self.detector.threshold_.items()},
            "machine_types": self.machines,
            "sections": {m: sorted(s) for m, s in sections.items()},
            "versions": {"harken_running": harken.__version__, **{f"{k}_trained": v for k, v in self.versions.items()}},
            "training": {
                "epochs_run": len(history),
                "last_epoch": {k: v for k, v in last.items() if isinstance(v, (int, float, str))},
                "best_val_auc": max((float(h["val_auc"]) for h in history if _finite(h.get("val_auc"))), default=None),
            },
            "limits": {
                "max_body_bytes": self.limits.max_body_bytes,
                "max_seconds": self.limits.max_seconds,
                "max_batch": self.batcher.max_batch,
                "max_wait_ms": self.batcher.max_wait * 1000.0,
            },
        }


def _finite(value: Any) -> bool:
    try:
        return np.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _section_from_name(filename: str) -> str | None:
    from harken.data.names import parse_clip_name

    try:
        return parse_clip_name(Path(filename).name).section
    except (HarkenError, ValueError):
        return None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _versions(path: Path | None) -> dict[str, str]:
    if path is None or not path.is_file():
        return {}
    from harken.api import model_versions

    try:
        return model_versions(path)
    except HarkenError:
        return {}


# ----------------------------------------------------------------------------- the app
def create_app(service: Service) -> FastAPI:
    """The FastAPI application of ``service`` (its batch worker runs for the app's lifetime)."""
    class _InMemoryParser(MultiPartParser):
        # Keep the whole upload in memory (it is bounded by max_body_bytes): no temp files.
        spool_max_size = service.limits.max_body_bytes + 1

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.get_running_loop().run_in_executor(service.batcher.executor, service.warmup)
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()
            service.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="harken", version=harken.__version__, lifespan=lifespan)

    def refuse(status: int, code: str, detail: str) -> JSONResponse:
        service.refused += 1
        return JSONResponse({"error": code, "detail": detail}, status_code=status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model_version": service.model_version,
            "uptime_s": round(time.time() - service.started, 3),
            "queued": service.batcher.pending,
            "served": service.served,
            "refused": service.refused,
            "batches": service.batcher.batches,
            "largest_batch": service.batcher.largest_batch,
        }

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return service.model_card()

    @app.post("/score")
    async def score(request: Request) -> Any:
        t0 = time.perf_counter()
        limit = service.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                return refuse(400, "bad_request", "Content-Length is not a number")
            if too_big:
                return refuse(413, "body_too_large", f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            return refuse(415, "unsupported_media_type", "send multipart/form-data with the audio in the file field 'file'")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return refuse(413, "body_too_large", f"request body is over the limit of {limit} bytes")
        t_read = time.perf_counter()

        async def once() -> AsyncIterator[bytes]:
            yield bytes(body)

        try:
            form = await _InMemoryParser(request.headers, once(), max_files=1, max_fields=8, max_part_size=4096).parse()
        except MultiPartException as exc:
            return refuse(400, "bad_form", f"malformed multipart form: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - python-multipart raises assorted errors on garbage
            return refuse(400, "bad_form", f"malformed multipart form: {error_text(exc)}")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return refuse(400, "missing_file", "no file in the form field 'file'")
        data = await upload.read()
        filename = Path(upload.filename or "upload").name or "upload"
        if not data:
            return refuse(400, "empty_file", f"{filename}: the uploaded file is empty (0 bytes)")
        machine, section = form.get("machine"), form.get("section")
        loop = asyncio.get_running_loop()
        try:
            clip = service.clip_for(
                machine if isinstance(machine, str) else None, section if isinstance(section, str) else None, filename
            )
            wave, duration = await loop.run_in_executor(service.pool, service.decode, data, filename)
            t_decode = time.perf_counter()
            spec = await loop.run_in_executor(service.pool, service.features, wave)
            t_feat = time.perf_counter()
            result, batch = await service.batcher.submit(_Item(clip, spec, duration))
        except RequestError as exc:
            return refuse(exc.status, exc.code, exc.detail)
        t_done = time.perf_counter()
        if not result.ok:
            return refuse(422, "bad_audio", result.error or "cannot score this audio")
        service.served += 1
        return _response(service, result, clip, batch, {
            "read": t_read - t0, "decode": t_decode - t_read, "features": t_feat - t_decode,
            "queue_and_score": t_done - t_feat, "total": t_done - t0,
        })  # fmt: skip

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": "internal", "detail": error_text(exc)}, status_code=500)

    return app


def _response(service: Service, r: ClipScore, clip: FieldClip, batch: int, seconds: dict[str, float]) -> dict[str, Any]:
    return {
        "file": clip.name,
        "score": r.score,
        "decision": r.decision,
        "anomalous": bool(r.decision),
        "threshold": r.threshold,
        "threshold_key": r.threshold_key,
        "machine": None if clip.machine == "*" else clip.machine,
        "section": clip.section,
        "score_kind": r.kind,
        "scores": r.scores,
        "duration_s": r.duration_s,
        "model_version": service.model_version,
        "harken_version": harken.__version__,
        "batch_size": batch,
        "timing_ms": {k: round(v * 1000.0, 3) for k, v in seconds.items()},
        "window_seconds": r.window_seconds,
        "timeline": [{"start_s": s, "score": v} for s, v in r.timeline],
    }


def build_service(
    run: str | Path,
    *,
    limits: Limits | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
) -> Service:
    from harken.api import load_run

    return Service(load_run(run), model_path=run, limits=limits, max_batch=max_batch, max_wait_ms=max_wait_ms)


# ----------------------------------------------------------------------------- CLI
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a trained run over HTTP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, help="run directory (or its model.pt)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB, help="largest request body in MiB (413 above)")
    p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="longest audio in seconds (413 above)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="most requests scored in one batch")
    p.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS, help="how long the first request of a batch waits for company")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_seconds=float(args.max_seconds))
    service = build_service(args.run, limits=limits, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    print(
        f"harken serve: {service.detector.name} model {service.model_version} "
        f"({', '.join(service.machines) or 'no machine types'}) on http://{args.host}:{args.port}",
        flush=True,
    )
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def serve_in_thread(service: Service, *, host: str = "127.0.0.1", port: int = 0) -> tuple[Any, Any, int]:
    """Start a real uvicorn server on a background thread; ``(server, thread, port)``.

    For tests and the load benchmark: ``port=0`` binds a free port (the socket is bound here
    and handed to uvicorn, so no other process can take it in between).  Stop it with
    ``server.should_exit = True; thread.join()``.
    """
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    config = uvicorn.Config(create_app(service), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="harken-uvicorn")
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, bound

