"""`spo inspect RUN_DIR --serve`: the page of a run that is still training, served on
127.0.0.1 only (never another interface: the page shows prompts and model outputs).

    GET /                   the page (index embedded, no iteration)
    GET /index.json         the index, read afresh (the page polls it every 10 s)
    GET /iteration/N.json   iteration N's JSON (cached until its episode log changes)

The tokenizer is loaded once, when the server starts.
"""

from __future__ import annotations

import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from spo.config import ConfigError
from spo.inspect.page import render_page
from spo.inspect.run_data import (
    TokenText,
    episode_files,
    index_payload,
    load_iteration,
    load_token_text,
    read_config,
)

log = logging.getLogger("spo.inspect")

HOST = "127.0.0.1"
_ITERATION = re.compile(r"^/iteration/(\d+)\.json$")


class RunSource:
    """A run folder read on demand: the index every time, an iteration when its file changed."""

    def __init__(self, run_dir: Path, tokens: TokenText | None = None):
        self.run_dir = run_dir
        self.config = read_config(run_dir)
        self.tokens = tokens or load_token_text(run_dir, self.config)
        self._cache: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def index(self) -> dict[str, Any]:
        logged = list(episode_files(self.run_dir))
        return index_payload(self.run_dir, self.config, logged, [], mode="serve", tokenizer=self.tokens.source)

    def iteration(self, n: int) -> dict[str, Any] | None:
        files = episode_files(self.run_dir)
        if n not in files:
            return None
        stat = files[n].stat()
        key = (stat.st_mtime_ns, stat.st_size, max(files))  # a later log may replay this one's edges
        if n not in self._cache or self._cache[n][0] != key:
            self._cache[n] = (key, load_iteration(files, n, self.tokens, self.config))
        return self._cache[n][1]


def handler_for(source: RunSource) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self.send(render_page(source.index(), {}).encode("utf-8"), "text/html; charset=utf-8")
            elif path == "/index.json":
                self.send_json(source.index())
            elif m := _ITERATION.match(path):
                payload = source.iteration(int(m.group(1)))
                if payload is None:
                    self.send_error(404, "no episode log for that iteration")
                else:
                    self.send_json(payload)
            else:
                self.send_error(404)

        def send_json(self, data: Any) -> None:
            self.send(json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8"), "application/json")

        def send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def make_server(run_dir: Path, port: int, tokens: TokenText | None = None) -> ThreadingHTTPServer:
    """A server for `run_dir` on 127.0.0.1:`port` (0: any free port), not yet serving."""
    source = RunSource(run_dir, tokens)
    try:
        return ThreadingHTTPServer((HOST, port), handler_for(source))
    except OSError as err:
        raise ConfigError(f"--port {port}: cannot listen on {HOST}:{port} ({err.strerror})") from None


def serve(run_dir: Path, port: int) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(run_dir, port)
    print(f"serving {run_dir} at http://{HOST}:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
