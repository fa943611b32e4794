"""Logging for every Graft process: text or JSON lines (GRAFT_LOG_FORMAT), each line about a job carrying its id,
and, on workers, a copy of a job's own lines in the database for `GET /api/v1/jobs/<id>/logs`."""
from __future__ import annotations

import logging
import queue
import re
from contextlib import contextmanager
from logging.handlers import QueueHandler, QueueListener
from contextvars import ContextVar
from types import MappingProxyType
from typing import Iterable, Iterator, Mapping

from graft.shared.config import Config

JOB_ID: ContextVar[str | None] = ContextVar("graft_job_id", default=None)
MAX_LINES_PER_JOB = 2000  # per job and process: a chatty job cannot fill the database
MAX_MESSAGE_CHARS = 4000
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(job_tag)s: %(message)s"
STATE_CHANGES = "graft.shared.lifecycle"  # its lines repeat the job's events, which the API already serves


ARTIFACTS = "<artifacts>"  # what users see in place of a folder Graft chose
HOST = "<host>"  # ... and in place of a worker's host name


def mask_private(text: str, folders: Mapping[str, str] = MappingProxyType({}), hosts: Iterable[str] = ()) -> str:
    """text with each folder replaced by its label (longest first) and each host name, as a whole word, by HOST.

    What users read (job log lines, a job's error and events) is masked so; the database keeps the raw text."""
    labels = {folder.rstrip("/"): label for folder, label in folders.items() if folder.strip("/")}
    for folder in sorted(labels, key=len, reverse=True):  # a folder inside another one first
        text = text.replace(folder, labels[folder])
    names = sorted({h for h in hosts if h and h != HOST}, key=len, reverse=True)
    if names:
        text = re.sub(r"(?<![\w.-])(?:" + "|".join(map(re.escape, names)) + r")(?![\w-])", HOST, text)
    return text


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Within this block, log lines of this thread are about job_id."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


class JobIdFilter(logging.Filter):
    """Stamp each record with the job it is about (job_id, or None; job_tag for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; never drops a record."""
        job_id = getattr(record, "job_id", None) or JOB_ID.get()
        record.job_id = job_id
        record.job_tag = f" [job {job_id}]" if job_id else ""
        return True


def configure_logging(config: Config, level: int = logging.INFO) -> None:
    """Send every log line to stderr, as text or as one JSON object per line, with its job id."""
    handler = logging.StreamHandler()
    handler.addFilter(JobIdFilter())
    if config.log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(job_id)s",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class JobLogHandler(logging.Handler):
    """Store the lines a job's own code logs (INFO and up, graft.* loggers) as JobLogLine rows, one short write each.

    Runs behind a queue (start_job_log_capture): a line logged inside an open transaction (every status change logs)
    would otherwise wait on that transaction's own SQLite lock. A failed write is dropped, not retried: the job must
    never wait on, or fail because of, its own log.
    """

    def __init__(self, database_url: str, worker: str | None = None, private: tuple[str, ...] = ()) -> None:
        super().__init__(logging.INFO)
        self.database_url, self.worker = database_url, worker
        # Folders Graft chose (the artifacts folder): users see "<artifacts>", never where the server keeps things.
        self.private = tuple(sorted({p.rstrip("/") for p in private if p.strip("/")}, key=len, reverse=True))
        self._counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record as a row when it is about a job."""
        # Stamped by JobIdFilter in the thread that logged it. Lines logged while a row is written come from the
        # listener's own thread, which runs no job: they carry no id and are never written (no recursion).
        job_id = getattr(record, "job_id", None)
        if not job_id or not record.name.startswith("graft") or record.name == STATE_CHANGES:
            return
        count = self._counts.get(job_id, 0)
        if count >= MAX_LINES_PER_JOB:
            return
        self._counts[job_id] = count + 1
        message = record.getMessage() if count + 1 < MAX_LINES_PER_JOB else f"(log capped at {MAX_LINES_PER_JOB} lines)"
        message = mask_private(message, {folder: ARTIFACTS for folder in self.private})
        try:
            from graft.shared.db import session_scope
            from graft.shared.models import JobLogLine

            with session_scope(self.database_url) as session:
                session.add(JobLogLine(job_id=job_id, level=record.levelname, logger=record.name[:255],
                                       worker=self.worker, message=message[:MAX_MESSAGE_CHARS]))
        except Exception:  # noqa: BLE001 - see the class docstring
            pass


def start_job_log_capture(database_url: str, worker: str, private: tuple[str, ...] = ()) -> QueueListener:
    """Copy job log lines of graft.* loggers into the database from a background thread (in a worker's pool child);
    the private folders are masked in what is stored."""
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    producer = QueueHandler(lines)
    producer.setLevel(logging.INFO)
    producer.addFilter(JobIdFilter())  # the job id lives in the logging thread's context: read it there
    listener = QueueListener(lines, JobLogHandler(database_url, worker, private))
    listener.start()
    logging.getLogger("graft").addHandler(producer)
    return listener
