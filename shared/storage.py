"""Server-side paths: data directories confined to configured roots, and the artifacts layout."""
from __future__ import annotations

import json
import os
import tempfile
from stat import S_ISREG
from pathlib import Path
from typing import Any, Iterable


class PathNotAllowed(ValueError):
    """A server-side path that is missing or lies outside every configured data root."""


def resolve_under_roots(path: str | os.PathLike[str], roots: Iterable[Path]) -> Path:
    """Resolve path (symlinks followed) and require it to be an existing folder inside one of roots."""
    roots = [Path(r).resolve() for r in roots]
    if not roots:
        raise PathNotAllowed("no data roots are configured on the server (set GRAFT_DATA_ROOTS)")
    raw = str(path)
    if not raw or "\x00" in raw:
        raise PathNotAllowed("path is empty or contains a NUL byte")
    candidate = Path(raw).expanduser()
    if not candidate.is_absolute():
        raise PathNotAllowed(f"path must be absolute: {raw}")
    resolved = candidate.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise PathNotAllowed(f"path is outside the configured data roots: {raw}")
    if not resolved.is_dir():
        raise PathNotAllowed(f"no such directory: {raw}")
    return resolved


def _file_mode() -> int:
    """The mode open() gives a new file here (0o666 less the umask), read without changing the umask."""
    try:  # os.umask can only be read by setting it, which races with other threads creating files
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
        return 0o666 & ~int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError):
        return 0o644


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path through a temp file in the same folder and os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())  # mkstemp's 0600 would leave exports and JSON unlike every other file beside them
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    """Atomically write payload as indented JSON."""
    atomic_write_bytes(path, json.dumps(payload, indent=2, sort_keys=True).encode())


def job_dir(artifacts_dir: Path, job_id: str) -> Path:
    """Working folder of a job (checkpoints)."""
    return Path(artifacts_dir) / "jobs" / job_id


def model_dir(artifacts_dir: Path, model_id: str) -> Path:
    """Folder holding a trained model's files."""
    return Path(artifacts_dir) / "models" / model_id


def tree_bytes(folder: Path) -> int:
    """Bytes in the regular files under folder (links not followed; 0 when it is missing)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if S_ISREG(stat.st_mode):
                total += stat.st_size
    return total
