"""A fault-injecting HTTP proxy for the API tests: a process of the test's own on 127.0.0.1, in front of a real server.

``python tests/fault_proxy.py UPSTREAM PORT [FAULT ...]`` forwards every request to ``UPSTREAM`` (e.g.
``http://127.0.0.1:8000``) and counts the POSTs that reach it. The faults are served in order, one to every other
POST (the 2nd, 4th, ...), then none: ``429`` (Too Many Requests, ``Retry-After: 1``), ``503``, ``drop`` (the
connection closed with no answer) and ``slow`` (an answer after ``SLOW_S`` seconds, past the client's time-out).
``GET /_stats`` answers ``{"posts": POSTs received, "forwarded": POSTs forwarded, "faults": faults served,
"models": POSTs per request "model" field}``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

#: Seconds a ``slow`` fault waits before it answers.
SLOW_S = 6.0


def serve(upstream: str, port: int, faults: list[str]) -> None:
    lock = threading.Lock()
    stats: dict = {"posts": 0, "forwarded": 0, "faults": 0, "models": {}}
    pending = list(faults)
    client = httpx.Client(base_url=upstream, timeout=600)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/_stats":
                with lock:
                    self._send(200, json.dumps(stats).encode())
                return
            r = client.get(self.path)
            self._send(r.status_code, r.content)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                model = str(json.loads(body).get("model"))
            except (ValueError, AttributeError):
                model = "?"
            with lock:
                stats["models"][model] = stats["models"].get(model, 0) + 1
                stats["posts"] += 1
                fault = pending.pop(0) if pending and stats["posts"] % 2 == 0 else None
                stats["faults"] += fault is not None
            if fault == "429":
                return self._send(429, b'{"error": "rate limited"}', {"Retry-After": "1"})
            if fault == "503":
                return self._send(503, b'{"error": "overloaded"}')
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            if fault == "slow":
                time.sleep(SLOW_S)
            r = client.post(self.path, content=body, headers={"Content-Type": "application/json"})
            with lock:
                stats["forwarded"] += 1
            self._send(r.status_code, r.content)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
