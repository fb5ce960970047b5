"""What a worker process's metrics port answers (``MSCC_METRICS_PORT``; ``shared/metrics.py`` starts it).

Like the Prometheus exporters: ``GET /metrics`` (and ``HEAD``) the text exposition, ``GET /`` a line
naming ``/metrics``, 404 for any other path and 405 for any other method. prometheus_client's own WSGI
app answers every path with the metrics and refuses ``HEAD``, so it is called only for ``/metrics``,
where it still chooses the format and compression from the request's headers.

The server is the standard library's (``wsgiref``), a thread per request: these processes load no web
framework.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

METRICS_PATH = "/metrics"
ALLOW = "GET, HEAD"
HOME = b"MSCC hub metrics: GET /metrics (Prometheus text format).\n"
PLAIN = "text/plain; charset=utf-8"

Answer = tuple[str, list[tuple[str, str]], bytes]


def routed(metrics: WSGIApplication) -> WSGIApplication:
    """``metrics`` on ``/metrics`` only, for ``GET`` and ``HEAD``; the answers above for the rest."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if path not in ("/", METRICS_PATH):  # an unknown path is unknown whatever the method
            status, headers, body = "404 Not Found", [("Content-Type", PLAIN)], b"Not found: see /metrics\n"
        elif method not in ("GET", "HEAD"):
            status, headers = "405 Method Not Allowed", [("Content-Type", PLAIN), ("Allow", ALLOW)]
            body = f"Method not allowed: use {ALLOW}\n".encode()
        elif path == "/":
            status, headers, body = "200 OK", [("Content-Type", PLAIN)], HOME
        else:  # HEAD is GET without the body: the same headers, the length GET would send
            status, headers, body = _called(metrics, {**environ, "REQUEST_METHOD": "GET"})
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [b"" if method == "HEAD" else body]

    return app


def _called(app: WSGIApplication, environ: WSGIEnvironment) -> Answer:
    """What ``app`` answers to ``environ``: its status, headers and whole body."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    body = b"".join(app(environ, start_response))
    status, headers = started[-1]
    return status, headers, body


class _Quiet(WSGIRequestHandler):
    """No access log on stderr: every scrape would write a line, and not as our JSON log."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(host: str, port: int, registry: Collector) -> WSGIServer:
    """Listen on ``host``:``port`` now (port 0: a free one) and answer in a daemon thread until
    ``shutdown()``; ``registry`` is collected for each scrape, in the thread of the request."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family  # an IPv6 host too

    server = make_server(host, port, routed(make_wsgi_app(registry)), Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
