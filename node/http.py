"""The node's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/status`` for people,
``/clinical/<accession>`` (GET, PUT) for the clinical data of a study.

Every endpoint except ``/metrics`` requires ``Authorization: Bearer <token>``
when ``http.token`` is configured; ``/clinical`` is refused outright when no
token is configured (clinical data must not be readable or writable
anonymously). A ``pacsnode worker`` serves ``/metrics`` alone
(:class:`MetricsHttpServer`).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from node.clinical import ClinicalData, ClinicalDataError, ClinicalStore
from node.metrics import REGISTRY

log = logging.getLogger("pacsnode.http")

HealthCheck = Callable[[], dict[str, Any]]

CLINICAL_PREFIX = "/clinical/"
#: Clinical data is a few hundred bytes; anything much larger is not clinical data.
MAX_CLINICAL_BODY = 64 * 1024


class _BackgroundHttpServer:
    """A threading HTTP server on a daemon thread: what both endpoints share."""

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class NodeHttpServer(_BackgroundHttpServer):
    """Serves metrics, health and status on a background thread."""

    def __init__(self, host: str, port: int, token: str | None,
                 health: HealthCheck, status: Callable[[], dict[str, Any]],
                 clinical: ClinicalStore | None = None) -> None:
        self.token = token
        self.health = health
        self.status = status
        self.clinical = clinical
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("http request", extra={"line": format % args})

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, payload: dict[str, Any]) -> None:
                self._send(code, json.dumps(payload, indent=1).encode(), "application/json")

            def _authorised(self) -> bool:
                if not server.token:
                    return True
                given = self.headers.get("Authorization", "")
                expected = f"Bearer {server.token}"
                return hmac.compare_digest(given.encode(), expected.encode())

            def _clinical_accession(self) -> str | None:
                """The accession of a /clinical request, after answering it if it may not go on."""
                path = self.path.split("?", 1)[0]
                if server.clinical is None:
                    self._json(404, {"error": "not found"})
                    return None
                if not server.token:
                    self._json(403, {"error": "clinical data must not be readable or writable anonymously:"
                                              " set http.token in the node configuration"})
                    return None
                if not self._authorised():
                    self._json(401, {"error": "missing or wrong bearer token"})
                    return None
                return unquote(path[len(CLINICAL_PREFIX):])

            def _get_clinical(self) -> None:
                accession = self._clinical_accession()
                if accession is None:
                    return
                assert server.clinical is not None
                try:
                    record = server.clinical.get(accession)
                except ClinicalDataError as exc:
                    self._json(400, {"error": str(exc)})
                    return
                if record is None:
                    self._json(404, {"error": f"no clinical data for accession {accession!r}"})
                    return
                self._json(200, record.as_json())

            def do_PUT(self) -> None:  # noqa: N802
                if not self.path.split("?", 1)[0].startswith(CLINICAL_PREFIX):
                    self._json(404, {"error": "not found"})
                    return
                accession = self._clinical_accession()
                if accession is None:
                    return
                assert server.clinical is not None
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    self._json(411, {"error": "Content-Length required"})
                    return
                if length > MAX_CLINICAL_BODY:
                    self._json(413, {"error": f"body of {length} bytes; clinical data is at most"
                                              f" {MAX_CLINICAL_BODY}"})
                    return
                try:
                    payload = json.loads(self.rfile.read(length) or b"null")
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    self._json(400, {"error": f"body is not JSON: {exc}"})
                    return
                try:
                    data = ClinicalData.parse(payload)
                    record = server.clinical.put(accession, data, source=f"http:{self.client_address[0]}")
                except ClinicalDataError as exc:
                    log.info("clinical data refused", extra={"reason": "validation"})
                    self._json(400, {"error": str(exc)})
                    return
                except Exception as exc:
                    log.exception("storing clinical data failed")
                    self._json(500, {"error": type(exc).__name__})
                    return
                self._json(200, record.as_json())

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path.startswith(CLINICAL_PREFIX):
                    self._get_clinical()
                    return
                if path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                    return
                if path not in ("/healthz", "/status"):
                    self._json(404, {"error": "not found"})
                    return
                if not self._authorised():
                    self._json(401, {"error": "missing or wrong bearer token"})
                    return
                try:
                    if path == "/healthz":
                        report = server.health()
                        self._json(200 if report["status"] == "ok" else 503, report)
                    else:
                        self._json(200, server.status())
                except Exception as exc:
                    log.exception("http handler failed")
                    self._json(500, {"error": type(exc).__name__})

        super().__init__(host, port, Handler, "http")


class MetricsHttpServer(_BackgroundHttpServer):
    """Serves ``/metrics`` of *registry* alone, on a background thread (a worker's endpoint)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("http request", extra={"line": format % args})

            def do_GET(self) -> None:  # noqa: N802
                if self.path.split("?", 1)[0] != "/metrics":
                    code, body, content_type = 404, b"only /metrics here\n", "text/plain"
                else:
                    try:
                        code, body, content_type = 200, generate_latest(registry), CONTENT_TYPE_LATEST
                    except Exception as exc:
                        log.exception("metrics collection failed")
                        code, body, content_type = 500, type(exc).__name__.encode(), "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(host, port, Handler, "metrics-http")
