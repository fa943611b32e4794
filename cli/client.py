"""The CLI's side of the client: its usage error and the progress bars it draws (the HTTP is graft.client)."""
from __future__ import annotations

import sys
from typing import Any

from graft.client import GraftError


class ClientError(GraftError):
    """A command used wrongly (no such folder, both sources given): printed as `graft: ...`, exit status 2."""


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    """A one-line text progress bar for a job."""
    progress = job.get("progress") or {}
    fraction = float(progress.get("fraction") or 0.0)
    bar = "#" * int(fraction * width)
    parts = [f"[{bar:<{width}}] {fraction * 100:5.1f}%", job["status"]]
    if job.get("kind") == "predict":
        parts.append(f"{progress.get('files_done', 0)}/{progress.get('files_total', '?')} files")
    elif progress.get("phase") in ("loading", "caching"):
        what = "loading images" if progress["phase"] == "loading" else "computing frozen-trunk features"
        parts.append(f"{what} {progress.get('done', 0)}/{progress.get('total', '?')}")
    elif progress.get("epochs"):
        parts.append(f"epoch {progress.get('epoch', 0)}/{progress['epochs']}")
    best = (job.get("metrics") or {}).get("best_val_acc")
    if best is not None:
        parts.append(f"best val_acc {best:.3f}")
    if progress.get("eta_s") and job["status"] == "running":
        parts.append(f"eta {progress['eta_s']:.0f}s")
    return "  ".join(parts)


class ProgressPrinter:
    """Draws a job's progress bar on stderr: one updating line on a TTY, a line per change otherwise."""

    def __init__(self) -> None:
        self.last = ""

    def __call__(self, job: dict[str, Any]) -> None:
        line = progress_line(job)
        done = job["status"] not in ("queued", "running")
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{line}\033[K" + ("\n" if done else ""))
        elif line != self.last:
            sys.stderr.write(line + "\n")
        self.last = line
        sys.stderr.flush()


class Bar:
    """A progress bar on stderr: one updating line on a TTY, a line every 10% otherwise."""

    def __init__(self, label: str, unit: str = "") -> None:
        self.label, self.unit, self._shown = label, unit, -1

    def show(self, done: int, total: int) -> None:
        """Draw done of total when the shown figure changes."""
        total = max(total, 1)
        fraction = min(done / total, 1.0)
        step = int(fraction * 100) if sys.stderr.isatty() else int(fraction * 10) * 10
        if step == self._shown:
            return
        self._shown = step
        if self.unit == "MB":
            figures = f"{done / 2**20:.2f}/{total / 2**20:.2f} MB"
        else:
            figures = f"{done}/{total} {self.unit}".strip()
        line = f"{self.label} [{'#' * int(fraction * 30):<30}] {fraction * 100:5.1f}%  {figures}"
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{line}\033[K" + ("\n" if done >= total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
