"""An HTTP forwarder in front of a real server that goes down after a set number of POSTs, so that a test
can take a PACS off the network at an exact point of a run (stopping the server itself races the run).

``CutProxy(target, posts_before_cut)`` listens on a free loopback port and forwards every request to
``target`` (method, path, body and the headers that matter: authorization, content and accept types). Once
``posts_before_cut`` POSTs have been answered (None: never), the next POST and every request after it are
dropped without a reply, and the listener closes: clients see "connection refused/aborted", as when a server
dies. With ``certificate`` (a PEM holding the key and the certificate) it serves HTTPS: a TLS front of a
plain-HTTP server.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

FORWARDED = ("Authorization", "Content-Type", "Accept")
RETURNED = ("Content-Type",)


class CutProxy:
    def __init__(self, target: str, posts_before_cut: int | None, certificate: str | None = None):
        self.target = target.rstrip("/")
        self.remaining = float("inf") if posts_before_cut is None else posts_before_cut
        self.down = False
        self.forwarded_posts = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.scheme = "https" if certificate else "http"
        if certificate:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certificate)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def _admit(self, method: str) -> bool:
        with self._lock:
            if method == "POST" and not self.down:
                if self.remaining <= 0:
                    self.down = True
                else:
                    self.remaining -= 1
            return not self.down

    def _cut(self) -> None:
        # the listener closes in another thread: shutdown() waits for serve_forever, which runs here
        threading.Thread(target=self.close, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                if not proxy._admit(self.command):
                    self.close_connection = True  # no reply at all
                    proxy._cut()
                    return
                body = self._body()
                headers = {k: self.headers[k] for k in FORWARDED if k in self.headers}
                reply = requests.request(self.command, proxy.target + self.path, data=body or None,
                                         headers=headers, timeout=60)
                if self.command == "POST":
                    proxy.forwarded_posts += 1
                self.send_response(reply.status_code)
                for key in RETURNED:
                    if key in reply.headers:
                        self.send_header(key, reply.headers[key])
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            def _body(self) -> bytes:
                # dicomweb_client sends STOW-RS bodies over its chunk size (1 MB) chunked
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()  # the empty trailer
                return body

            do_GET = do_POST = do_PUT = do_DELETE = _forward

            def log_message(self, *args) -> None:
                pass

        return Handler
