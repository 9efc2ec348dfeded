"""Running the app: uvicorn on a socket bound before the model loads (a taken port is reported
at once, and port 0 picks a free one whose number is then known), in the foreground for
`stable-sam serve` or in a thread for the tests and the benchmark."""
from __future__ import annotations

import socket
import threading
import time

from .deadline import with_request_deadline  # uvicorn's protocol: a missing uvicorn shows here

# Seconds from a request's first byte (or from the connection's opening) to its last: a 20 MiB
# upload needs 0.7 MB/s; a client that sends part of its headers or body and goes quiet is cut
# off then, so it holds a connection for no longer (and never an in-flight slot: see guards).
REQUEST_TIMEOUT = 30.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); OSError says why it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    """The page's URL on this machine. A socket on every address (0.0.0.0, ::) is opened by
    loopback: the page must be addressed as the address it arrives on (see guards), and no
    request arrives on 0.0.0.0."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _server(app, log_level: str, request_timeout: float):
    import uvicorn

    # One worker process (the model is loaded once, in this process); no access log, so a
    # burst of requests does not flood the terminal. The protocol is h11 whatever else is
    # installed, with the request deadline added; idle keep-alive connections close after 5 s.
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                         http=with_request_deadline(request_timeout),
                                         timeout_keep_alive=5, timeout_graceful_shutdown=2))


def serve_forever(app, sock: socket.socket, log_level: str = "warning",
                  request_timeout: float = REQUEST_TIMEOUT) -> None:
    """Serves until Ctrl+C (or SIGTERM); uvicorn finishes the requests in progress first."""
    try:
        _server(app, log_level, request_timeout).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl+C it handled: the server has already stopped


class ServerThread:
    """The app served from a background thread: `with ServerThread(app) as url: ...`; the
    server stops (and its socket closes) when the block ends."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30,
                 request_timeout: float = REQUEST_TIMEOUT):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = _server(app, "error", request_timeout)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.start_timeout = start_timeout

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("the demo server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
