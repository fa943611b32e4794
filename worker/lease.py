"""What every lease holder on a worker needs: telling dead holders from live ones, and a heartbeat thread."""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_alive(worker: str) -> Callable[[Any], bool]:
    """A check of a lease holder (anything with .worker and .worker_pid) as seen from this worker node.

    A holder on this node whose process is gone (a killed pool child) is dead for sure: no need to wait for its
    lease to expire. Holders elsewhere are judged by their lease alone.
    """
    def alive(holder: Any) -> bool:
        return holder.worker != worker or holder.worker_pid is None or pid_alive(holder.worker_pid)

    return alive


def beat_interval(lease_s: float) -> float:
    """How often a holder renews: well before its lease expires."""
    return min(2.0, lease_s / 4)


class Heartbeat:
    """Calls renew() on a thread every interval while the block runs; once renew() says no, should_stop() is True.

    renew returns False when the lease was lost or the work should end (its job was cancelled or failed).
    A renewal that raises (a database hiccup) is tried again at the next beat: the lease has slack.
    """

    def __init__(self, renew: Callable[[], bool], interval: float, name: str) -> None:
        self.renew, self.interval, self.name = renew, interval, name
        self.stopped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=name, daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                keep = self.renew()
            except Exception:  # noqa: BLE001 - see the class docstring
                log.warning("%s: lease renewal failed", self.name, exc_info=True)
                continue
            if not keep:
                self.stopped = True
                return

    def should_stop(self) -> bool:
        """True once the lease was lost or the work's job ended."""
        return self.stopped
