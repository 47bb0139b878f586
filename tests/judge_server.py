"""A stand-in OpenAI-compatible judge on 127.0.0.1, shared by the tests that judge answers over HTTP.

``with judge_server() as (url, chat): ...`` serves ``POST .../chat/completions`` on a free port of
127.0.0.1 until the block ends; ``url`` is the base URL to give :class:`OpenAIJudge` (``http://127.0.0.1:N/v1``).
Each request takes the next of ``chat.replies``, a list of ``(status, content or payload, delay seconds)``:
a string is sent as the assistant's message content, anything else as the JSON body; with no reply left
the answer is ``chat.default`` (``(200, "yes", 0.0)``) or, when ``chat.reply`` is set, ``chat.reply(body)``
(the request's JSON) for content that depends on the request. ``chat.calls`` counts the requests and
``chat.requests`` keeps their bodies.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Chat(BaseHTTPRequestHandler):
    """OpenAI-compatible stand-in: each reply is (status, content or payload, delay seconds)."""

    replies: list[tuple[int, Any, float]] = []
    default: tuple[int, Any, float] = (200, "yes", 0.0)
    reply: Callable[[dict[str, Any]], str] | None = None
    requests: list[dict[str, Any]] = []
    calls = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        cls = type(self)
        cls.calls += 1
        cls.requests.append(body)
        if cls.replies:
            status, payload, delay = cls.replies.pop(0)
        elif cls.reply is not None:
            status, payload, delay = 200, cls.reply(body), 0.0
        else:
            status, payload, delay = cls.default
        time.sleep(delay)
        if isinstance(payload, str):
            payload = {"choices": [{"message": {"role": "assistant", "content": payload}}]}
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def judge_server() -> Iterator[tuple[str, type[Chat]]]:
    """Serve :class:`Chat` on 127.0.0.1 (a free port) with fresh state; yields ``(base url, Chat)``."""
    Chat.replies, Chat.requests, Chat.calls, Chat.reply = [], [], 0, None
    server = ThreadingHTTPServer(("127.0.0.1", 0), Chat)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", Chat
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        Chat.reply = None
