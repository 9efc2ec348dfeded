"""SIGTERM as a request to stop cleanly, and data-loader workers that leave it to the trainer."""
from __future__ import annotations

import signal
import threading

__all__ = ["StopRequest", "ignore_sigterm"]


class StopRequest:
    """SIGTERM (a cluster's pre-emption notice, `kill`, torchrun forwarding one) asks the loop to
    finish its step, write a checkpoint and return, so `--resume` loses nothing. Only the main
    thread can install signal handlers; elsewhere the request simply never comes."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def ignore_sigterm(worker_id: int) -> None:
    # A SIGTERM sent to the whole process group must reach the trainer, not kill its workers
    # mid-batch; the trainer shuts them down itself when it stops.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
