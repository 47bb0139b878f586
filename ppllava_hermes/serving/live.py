"""An app served in this process: uvicorn in a thread on a pre-bound loopback port (tests, benchmarks, notebooks).

The port is bound before uvicorn starts (no race for a free port); entering waits until the server accepts
connections (``RuntimeError`` if it dies or takes over 30 s); leaving asks it to exit and joins the thread.
"""

from __future__ import annotations

import socket
import threading
import time

__all__ = ["LiveServer"]


class LiveServer:
    """``with LiveServer(app) as live: httpx.get(live.url + "/health")``."""

    def __init__(self, app, host: str = "127.0.0.1") -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="uvicorn", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()
