"""The CLI's side of the client: its usage error and the progress bars it draws (tqdm; the HTTP is graft.client)."""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from graft.client import GraftError
from graft.shared.accuracy import describe

# On a TTY the bar redraws ten times a second; into a file or a pipe (CI logs, tests) a line every 10 s at most,
# plus the final one when the bar closes, so logs stay short.
TTY_INTERVAL_S, PIPE_INTERVAL_S = 0.1, 10.0
BAR_FORMAT = "{desc} [{bar:30}] {percentage:5.1f}%{postfix}"  # tqdm puts ", " before a postfix


class ClientError(GraftError):
    """A command used wrongly (no such folder, both sources given): printed as `graft: ...`, exit status 2."""


def make_bar(desc: str, total: float, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, sparse when stderr is not a terminal."""
    interval = TTY_INTERVAL_S if sys.stderr.isatty() else PIPE_INTERVAL_S
    return tqdm(total=total, desc=desc, file=sys.stderr, mininterval=interval, ascii=" #", leave=True,
                dynamic_ncols=True, **kwargs)


def job_status(job: dict[str, Any]) -> str:
    """What a job is doing, for the text after its bar: status, epoch or files, accuracy, eta."""
    progress = job.get("progress") or {}
    parts = [job["status"]]
    if job.get("kind") == "predict":
        parts.append(f"{progress.get('files_done', 0)}/{progress.get('files_total', '?')} files")
    elif progress.get("phase") in ("loading", "caching"):
        what = "loading images" if progress["phase"] == "loading" else "computing frozen-trunk features"
        parts.append(f"{what} {progress.get('done', 0)}/{progress.get('total', '?')}")
    elif progress.get("epochs"):
        parts.append(f"epoch {progress.get('epoch', 0)}/{progress['epochs']}")
    best = (job.get("metrics") or {}).get("best_val_acc")
    if best is not None and job["status"] != "succeeded":  # a training curve, not the model's accuracy
        parts.append(f"best epoch's validation accuracy {best:.3f}")
    if job.get("accuracy"):
        parts.append(f"accuracy {describe(job['accuracy'])}")
    if progress.get("eta_s") and job["status"] == "running":
        parts.append(f"eta {progress['eta_s']:.0f}s")
    return "  ".join(parts)


class ProgressPrinter:
    """Client.wait's on_progress: a job's progress as a tqdm bar on stderr, closed when the job has finished."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, job: dict[str, Any]) -> None:
        if self.bar is None:
            self.bar = make_bar(f"job {job['id'][:8]}", 100.0, bar_format=BAR_FORMAT)
        fraction = float((job.get("progress") or {}).get("fraction") or 0.0)
        if job["status"] == "succeeded":
            fraction = 1.0
        self.bar.n = round(min(max(fraction, 0.0), 1.0) * 100, 1)
        self.bar.set_postfix_str(job_status(job), refresh=False)
        self.bar.update(0)  # redraws when mininterval has passed
        if job["status"] not in ("queued", "running"):
            self.bar.close()  # draws the final state


class Bars:
    """One tqdm bar per phase of a transfer (on_progress(phase, done, total)): files zipped, bytes sent or received."""

    UNITS = {"zipping": ("files", False), "uploading": ("B", True), "downloading": ("B", True)}

    def __init__(self, **units: tuple[str, bool]) -> None:
        self.units = {**self.UNITS, **units}  # phase=(unit, scaled), e.g. uploading=("files", False)
        self.bars: dict[str, tqdm] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        bar = self.bars.get(phase)
        if bar is None:
            unit, scale = self.units.get(phase, ("", False))
            fmt = BAR_FORMAT.replace("{postfix}", "  {n_fmt}/{total_fmt} {unit}")
            # total 0: a download without Content-Length; tqdm then counts without a bar
            bar = self.bars[phase] = make_bar(f"{phase:<9}", total or None, unit=unit, unit_scale=scale,
                                              bar_format=fmt if total else None)
        bar.update(done - bar.n)
        if total and done >= total:
            bar.close()

    def close(self) -> None:
        """Close every bar (one left open by an error)."""
        for bar in self.bars.values():
            bar.close()
