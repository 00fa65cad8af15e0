"""What the fakes share: an HTTP server on 127.0.0.1 in a daemon thread, a
quiet HTTP/1.1 request handler, and HTTP basic auth decoding."""
from __future__ import annotations

import base64
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Self


class FakeHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, TCP_NODELAY (no delayed-ACK stalls), no request log.
    ``fake`` is the fake being served (set by ``serve``)."""

    fake: Any
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a: Any) -> None:  # quiet
        pass

    def basic_credentials(self) -> Optional[tuple[str, str]]:
        """(user, password) of an ``Authorization: Basic`` header, or None."""
        h = self.headers.get("Authorization", "")
        if not h.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(h[6:]).decode().partition(":")
        except Exception:
            return None
        return user, password


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed mid-request) is no error of the
        server's: no traceback, as a real service logs none."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def serve(fake: Any, handler: type[FakeHandler], port: int,
          name: Optional[str] = None) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``handler`` (a subclass whose ``fake`` is ``fake``) on 127.0.0.1:``port``
    (0: any free port) in a started daemon thread."""
    httpd = _Server(("127.0.0.1", port), type("Handler", (handler,), {"fake": fake}))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              name=name, daemon=True)
    thread.start()
    return httpd, thread


def shutdown(httpd: ThreadingHTTPServer) -> None:
    httpd.shutdown()
    httpd.server_close()


class FakeServer:
    """Lifecycle of a fake served by ``handler``: ``start()`` returns the URL,
    ``stop()``; ``with Fake() as fake:`` starts and stops it."""

    handler: type[FakeHandler]
    port: int
    # A slow server: seconds a write (POST) takes after it is applied and before
    # it is answered (the window in which a killed client has posted but not recorded).
    write_latency: float = 0.0
    _server: Optional[ThreadingHTTPServer] = None
    _thread: Optional[threading.Thread] = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        self._server, self._thread = serve(self, self.handler, self.port)
        return self.url

    def stop(self) -> None:
        if self._server:
            shutdown(self._server)
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def serve_until_interrupted(self) -> None:
        """For ``python -m``: start, print the URL, serve until Ctrl-C, stop."""
        print(self.start(), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            self.stop()
