"""graft.client without services: retries and backoff against a tiny local HTTP server, errors, upload bodies."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from graft.client import Client, NotFound, Unavailable
from graft.client.files import JUNK_NAMES, MultipartBody, is_junk_name, local_files, upload_parts, zip_folder
from graft.shared import files as server_files


class Script(BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of the server's script; the last one repeats."""

    def _answer(self) -> None:
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        server.seen.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
        status, body = server.script[min(len(server.seen), len(server.script)) - 1]  # type: ignore[attr-defined]
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 202:
            self.send_header("Retry-After", server.retry_after)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture()
def scripted() -> Iterator[ThreadingHTTPServer]:
    """A local HTTP server whose answers the test sets in .script; .seen lists the requests it got."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Script)
    server.script, server.seen, server.retry_after = [(200, {})], [], "0"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_a_get_is_retried_through_503s(scripted: ThreadingHTTPServer) -> None:
    scripted.script = [(503, {"error": "busy"}), (503, {"error": "busy"}), (200, {"id": "j1", "status": "queued"})]
    with Client(_url(scripted), "t", retries=3, backoff=0.01) as api:
        assert api.job("j1") == {"id": "j1", "status": "queued"}
    assert scripted.seen == ["GET /api/v1/jobs/j1"] * 3


def test_a_post_is_not_resent_after_a_503_and_errors_keep_the_message(scripted: ThreadingHTTPServer) -> None:
    scripted.script = [(503, {"error": "queue down", "status": 503})]
    with Client(_url(scripted), retries=3, backoff=0.01) as api:
        with pytest.raises(Unavailable) as caught:
            api.train("/data", epochs=1)  # the server may have recorded the job: a retry could make a second one
        assert caught.value.status == 503 and caught.value.body["error"] == "queue down"
        assert str(caught.value) == "HTTP 503: queue down" and len(scripted.seen) == 1
        scripted.script, scripted.seen = [(404, {"error": "no job with id x"})], []
        with pytest.raises(NotFound, match="HTTP 404: no job with id x"):
            api.job("x")


def test_a_refused_connection_raises_unavailable_quickly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{port}", retries=2, backoff=0.01) as api, pytest.raises(Unavailable):
        api.jobs().__next__()
    assert time.monotonic() - started < 5


def test_wait_polls_through_a_blip_longer_than_the_retries(scripted: ThreadingHTTPServer) -> None:
    running = {"id": "j", "status": "running", "progress": {"fraction": 0.5}}
    scripted.script = [(200, running), (503, {}), (503, {}), (503, {}), (200, {**running, "status": "succeeded"})]
    seen: list[str] = []
    with Client(_url(scripted), retries=1, backoff=0.01) as api:
        job = api.wait("j", on_progress=lambda j: seen.append(j["status"]), interval=0.01, timeout=10)
    assert job["status"] == "succeeded" and seen == ["running", "succeeded"]


def test_download_waits_through_202_then_saves_the_zip(scripted: ThreadingHTTPServer, tmp_path: Path) -> None:
    scripted.script = [(202, {"status": "exporting"}), (200, {"zip": "bytes"})]
    with Client(_url(scripted), retries=1, backoff=0.01) as api:
        saved = api.download_model("m1", "onnx", tmp_path / "m1.zip", timeout=10)
    assert saved.read_bytes() == b'{"zip": "bytes"}'
    assert scripted.seen == ["GET /api/v1/models/m1/download?format=onnx"] * 2  # asked again after Retry-After


def test_the_client_skips_the_same_junk_as_the_server() -> None:
    assert JUNK_NAMES == server_files.JUNK_NAMES
    for name in (".DS_Store", "Thumbs.db", "__MACOSX", "a.jpg", ".hidden", "desktop.ini", "x"):
        assert is_junk_name(name) == server_files.is_junk_name(name)


def test_upload_parts_cap_files_per_request(tmp_path: Path) -> None:
    files = [(f"{i}.jpg", tmp_path / f"{i}.jpg") for i in range(450)]
    assert [len(p) for p in upload_parts(files)] == [200, 200, 50]


def test_the_multipart_body_streams_and_rewinds_for_a_retry(tmp_path: Path) -> None:
    archive = tmp_path / "set.zip"
    archive.write_bytes(b"x" * 5000)
    progress: list[tuple[str, int, int]] = []
    body = MultipartBody(archive, "my\nset", lambda *p: progress.append(p))
    first = b"".join(iter(lambda: body.read(1024), b""))
    assert len(first) == len(body) and b"x" * 5000 in first and b'name="name"\r\n\r\nmy set\r\n' in first
    assert progress[-1] == ("uploading", len(body), len(body))
    assert body.seek(0) == 0 and body.tell() == 0
    assert b"".join(iter(lambda: body.read(4096), b"")) == first
    body.close()


@pytest.mark.parametrize("raw", [b"caf\xe9.jpg", b"100%\xff.png", b"plain.jpg", "naïve.jpg".encode()])
def test_local_names_that_are_not_utf8_are_sent_as_the_server_shows_them(tmp_path: Path, raw: bytes) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / os.fsdecode(raw)).write_bytes(b"x")
    [(name, path)] = local_files(folder)
    assert name == server_files.display_name(os.fsdecode(raw))  # the client's copy of the rule matches the server's
    name.encode("utf-8")  # text a multipart header and a zip can carry
    assert server_files.original_name(name) == os.fsdecode(raw) and path.is_file()
    zip_folder([(name, path)], tmp_path / "out.zip")  # raised UnicodeEncodeError before the names were escaped
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.namelist() == [name]
