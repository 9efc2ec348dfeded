"""SIGTERM and Ctrl+C (SIGINT) during `stable-sam reproduce`: a stage stops cleanly and a rerun
continues it.

A training stage listens for SIGTERM itself (`stable_sam.training.signals.StopRequest`): it
finishes its step, writes its checkpoint and returns. Ctrl+C is handed to that same listener, so
it checkpoints too instead of dying mid-step. Outside a training stage nothing listens; the
signal stops the stage at once (its outputs are written atomically, so nothing half-written is
left, and a rerun redoes that stage).
"""
from __future__ import annotations

import signal
import threading

__all__ = ["ReproductionStopped", "StopSignals", "EXIT_CODES"]

# the shell's codes for "killed by the signal", as `stable-sam train` exits on SIGTERM
EXIT_CODES = {signal.SIGTERM: 128 + 15, signal.SIGINT: 128 + 2}
NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl+C (SIGINT)"}


class ReproductionStopped(Exception):
    """A signal stopped the reproduction; the message says what a rerun continues from."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.signum]


class StopSignals:
    """Installs the SIGTERM and SIGINT handlers for a whole reproduction (main thread only;
    elsewhere no handler is installed and the signals keep their defaults)."""

    def __init__(self) -> None:
        self.signum = None  # the first signal received
        self._previous = {}

    def name(self, default: int = signal.SIGTERM) -> str:
        return NAMES[self.signum or default]

    def _handle(self, signum, frame) -> None:
        self.signum = self.signum or signum
        listener = signal.getsignal(signal.SIGTERM)
        if listener != self._handle and callable(listener):  # bound methods: equal, not identical
            listener(signal.SIGTERM, frame)  # a training stage: it checkpoints after its step
            return
        raise ReproductionStopped(f"stopped by {NAMES[self.signum]} (the stages already written "
                                  "are kept: run the same command again to continue)",
                                  self.signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
