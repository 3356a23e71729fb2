"""Structured logs with a request id, and the Prometheus metrics operators watch."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
_SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


def new_request_id() -> str:
    """A short random id for requests that bring none."""
    return uuid.uuid4().hex[:16]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": request_id_var.get(),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str, as_json: bool) -> None:
    """Log to stderr, one JSON object per line (or plain text), each with the current request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def quiet_native_decoders() -> None:
    """OpenCV, libpng and libtiff warn on stderr for every bad image a client sends; errors still show."""
    import cv2  # noqa: PLC0415

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "visinspect_requests", "Requests (stream items count one each) by method and status code",
            ["method", "code"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "visinspect_request_seconds", "Request latency by method", ["method"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.stage = Histogram(
            "visinspect_stage_seconds", "Time per pipeline stage", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "visinspect_batch_images", "Images per inference call (micro-batching merges concurrent requests)",
            buckets=_BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.anomalies = Counter(
            "visinspect_anomalies", "Images judged anomalous, by model", ["model"], registry=self.registry
        )
        self.scores = Histogram(
            "visinspect_score", "Normalised image scores by model (watch for drift)", ["model"],
            buckets=_SCORE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.versions_loaded = Gauge(
            "visinspect_model_versions_loaded", "Loaded versions per model", ["model"], registry=self.registry
        )
        self.versions_rejected = Counter(
            "visinspect_model_versions_rejected", "Model versions refused at load time", ["model"],
            registry=self.registry,
        )  # fmt: skip
        self.calls_in_flight = Gauge(
            "visinspect_calls_in_flight", "Inspection calls being served (a stream counts once)", registry=self.registry
        )
        self.repository_readable = Gauge(
            "visinspect_repository_readable", "1 while the model repository can be read, 0 while it cannot",
            registry=self.registry,
        )  # fmt: skip

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
