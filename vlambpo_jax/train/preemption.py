"""SIGTERM/SIGINT handling: the first signal asks the running stage to checkpoint and stop."""
from __future__ import annotations

import signal


class PreemptionGuard:
    """Poll `.requested` in training loops; a second SIGINT raises KeyboardInterrupt as usual."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested = False
        self.signal_name = ""
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class NoPreemption:
    """A guard that never fires, for library use outside the CLI."""
    requested = False
    signal_name = ""
