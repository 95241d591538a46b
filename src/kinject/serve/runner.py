"""Run the real server (uvicorn) with a draining shutdown, in the foreground (`kinject serve`)
or in a background thread on a free loopback port (the load test and the tests).

Draining: on the first SIGTERM/SIGINT (or `stop()`), the app answers new chat requests with
503 `draining` + Retry-After while the listener stays open, the requests it has received
finish, and only then uvicorn shuts down (closing the listener). Closing the listener at once,
as plain uvicorn does, resets the connections the kernel had already accepted into its
backlog: the client sees a read error for a request it had sent. A second signal forces the
exit, as with uvicorn.
"""

from __future__ import annotations

import signal
import threading
import time

import uvicorn

DRAIN_WINDOW_S = 0.5  # at least this long: connections already in the backlog are read and answered


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, graceful_timeout_s: float):
        super().__init__(config)
        self.graceful_timeout_s = graceful_timeout_s
        self.drain_started = False

    def handle_exit(self, sig, frame) -> None:
        app_server = getattr(getattr(self.config.app, "state", None), "server", None)
        if self.drain_started or app_server is None:
            return super().handle_exit(sig, frame)
        self.drain_started = True
        self._captured_signals.append(sig)  # re-raised after shutdown: a supervisor sees the signal
        app_server.draining = True
        threading.Thread(target=self._drain, args=(app_server,), name="kinject-drain", daemon=True).start()

    def _drain(self, app_server) -> None:
        end = time.monotonic() + self.graceful_timeout_s
        time.sleep(DRAIN_WINDOW_S)
        while app_server.busy() and time.monotonic() < end:
            time.sleep(0.02)
        self.should_exit = True


def make_server(app, host: str, port: int, graceful_timeout_s: float, log_level: str = "info") -> DrainingServer:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s)
    return DrainingServer(config, graceful_timeout_s)


class ServerThread:
    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, graceful_timeout_s: float = 10.0):
        self.server = make_server(app, host, port, graceful_timeout_s, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, name="kinject-uvicorn", daemon=True)
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerThread:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Drain (as on SIGTERM), then stop."""
        self.server.handle_exit(signal.SIGTERM, None)
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
