"""The stdlib HTTP server, narrowed to what the endpoint needs: GET only, no reverse DNS
lookups, requests logged at debug level without their query (it may hold the token)."""

from __future__ import annotations

import logging
import socket
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from edge_agent.http.routes import Response, Routes

log = logging.getLogger(__name__)

# A client that has not sent its whole request by then is dropped: a slow or idle client
# holds only its own thread, and only this long.
REQUEST_TIMEOUT_S = 10.0


class EndpointServer(ThreadingHTTPServer):
    daemon_threads = True  # a request in flight does not hold up the agent's exit

    def __init__(self, host: str, port: int, routes: Routes) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.routes = routes
        super().__init__((host, port), Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up in DNS (getfqdn), which can hang on a
        # device without a resolver; the name is never used.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client gone mid-answer (a closed tab, a scraper's timeout) is not the agent's
        # problem: no traceback on stderr.
        log.debug("http: %s: request not completed", client_address[0], exc_info=True)


class Handler(BaseHTTPRequestHandler):
    server_version = "edge-agent"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        routes = cast(EndpointServer, self.server).routes
        try:
            response = routes.get(
                self.path, self.headers.get("Authorization"), self.client_address[0]
            )
        except Exception:
            log.exception("http: %s failed", self.path.split("?", 1)[0])
            response = Response(500, "text/plain; charset=utf-8", b"internal error\n")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: %s %s", self.client_address[0], self.requestline.split("?", 1)[0])
