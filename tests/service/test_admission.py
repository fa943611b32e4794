"""No anonymous disk use: a real `graft api` (Hypercorn) answers an upload it will not take before reading its body.

A raw socket streams a 1 GB body (never held in memory) and watches for the answer while it sends: the answer must
come after a small fraction, the server must then stop reading, and neither the artifacts folder nor the server's
TMPDIR may grow. Real Redis and SQLite behind the server.
"""
from __future__ import annotations

import json
import os
import select
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import TOKEN, api_process, private_env

GB = 1 << 30
MB = 1 << 20
BLOCK = 64 * 1024
EARLY = 32 * MB  # the most a client may have sent when the refusal reaches it (loopback buffers hold a few MB)
BOUNDARY = "graftboundary"


def _folder_bytes(folder: Path) -> tuple[int, int]:
    """(files, bytes) below folder (the empty folders an upload path makes on first use are not counted)."""
    files = size = 0
    for path in folder.rglob("*"):
        if path.is_file():
            files, size = files + 1, size + path.stat().st_size
    return files, size


def _stream(url: str, path: str, total: int, headers: dict[str, str], chunked: bool = False) -> tuple[int, dict, int, int]:
    """POST a multipart body of total bytes (zeros after the part header) to path, answering as soon as the server
    does; returns (status, JSON body, bytes sent before the answer arrived, bytes the server still took after it)."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
             f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
             "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}",
             *(f"{k}: {v}" for k, v in headers.items())]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    preamble = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n").encode()
    block = b"\0" * BLOCK
    if chunked:  # one chunk per block: its size line, the data, CRLF
        block = f"{BLOCK:x}\r\n".encode() + block + b"\r\n"
    sent, answer = 0, b""
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head + (f"{len(preamble):x}\r\n".encode() + preamble + b"\r\n" if chunked else preamble))
        sock.setblocking(False)
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(block)
                except BlockingIOError:
                    continue
        sock.setblocking(True)
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head_text, _, rest = answer.partition(b"\r\n\r\n")
        status = int(head_text.split()[1])
        fields = {name.lower(): value  # header names are case-insensitive (Hypercorn sends them lower-cased)
                  for name, value in (line.split(": ", 1) for line in head_text.decode().split("\r\n")[1:])}
        while len(rest) < int(fields["content-length"]):
            rest += sock.recv(65536)
        # Keep sending: the server must close the connection soon instead of reading the rest of the gigabyte.
        after = 0
        sock.settimeout(10)
        try:
            while after < 256 * MB:
                after += sock.send(block)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
    return status, json.loads(rest), sent, after


def _server(service_env: dict[str, str], base: Path, **limits: str):  # noqa: ANN202
    """A real `graft api` with its own artifacts folder and TMPDIR under base."""
    (base / "tmp").mkdir()
    env = private_env(service_env, base, "graft-admission", GRAFT_ARTIFACTS_DIR=str(base / "artifacts"),
                      TMPDIR=str(base / "tmp"), GRAFT_MIN_FREE_MB="0", **limits)
    return api_process(env)


@pytest.fixture(scope="module")
def open_server(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The default upload limit (2 GB): a 1 GB body is within it, so only the token check can stop it early."""
    base = tmp_path_factory.mktemp("admission-open")
    with _server(service_env, base) as (url, _proc):
        yield url, base


@pytest.fixture(scope="module")
def server(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """8 MB uploads at most."""
    base = tmp_path_factory.mktemp("admission")
    with _server(service_env, base, GRAFT_MAX_UPLOAD_MB="8") as (url, _proc):
        yield url, base


@pytest.mark.parametrize("path", ["/api/v1/uploads", "/api/v1/datasets", "/api/v1/jobs/predict"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_anonymous_gigabyte_is_refused_before_it_is_read(open_server: tuple[str, Path], path: str,
                                                            chunked: bool) -> None:
    url, base = open_server
    before = {name: _folder_bytes(base / name) for name in ("artifacts", "tmp")}
    status, body, sent, after = _stream(url, path, GB, {}, chunked=chunked)
    print(f"{path} {'chunked' if chunked else 'Content-Length'}: 401 after {sent / MB:.1f} MB sent, "
          f"{after / MB:.1f} MB taken after it")
    assert status == 401 and "bearer token" in body["error"], body
    assert sent < EARLY, f"the 401 came after {sent / MB:.1f} MB of 1024"
    assert after < EARLY, f"the server read {after / MB:.1f} MB more after refusing"
    assert {name: _folder_bytes(base / name) for name in ("artifacts", "tmp")} == before


def test_an_over_size_upload_is_refused_from_its_content_length(server: tuple[str, Path]) -> None:
    url, base = server
    before = {name: _folder_bytes(base / name) for name in ("artifacts", "tmp")}
    status, body, sent, after = _stream(url, "/api/v1/uploads", GB, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 413 and body["limit_bytes"] == 8 * MB, body
    assert sent < EARLY and after < EARLY, (sent, after)
    assert {name: _folder_bytes(base / name) for name in ("artifacts", "tmp")} == before


@pytest.mark.parametrize("path", ["/api/v1/uploads", "/api/v1/datasets"])
def test_an_over_size_chunked_upload_is_cut_off_at_the_limit(server: tuple[str, Path], path: str) -> None:
    url, base = server
    before = {name: _folder_bytes(base / name) for name in ("artifacts", "tmp")}
    status, body, sent, after = _stream(url, path, GB, {"Authorization": f"Bearer {TOKEN}"}, chunked=True)
    assert status == 413, body
    assert sent < 8 * MB + EARLY and after < EARLY, (sent, after)
    assert {name: _folder_bytes(base / name) for name in ("artifacts", "tmp")} == before
    assert not os.listdir(base / "tmp")


def test_a_json_body_is_cut_off_at_one_mib(server: tuple[str, Path]) -> None:
    """A request that is not an upload is read into memory: past 1 MiB it is a 413, chunked or not."""
    url, _base = server
    body = json.dumps({"data_dir": "/nowhere", "name": "x" * (2 * MB)}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    sized = requests.post(f"{url}/api/v1/jobs/train", data=body, headers=headers, timeout=30)
    chunked = requests.post(f"{url}/api/v1/jobs/train", data=iter([body[i:i + MB] for i in range(0, len(body), MB)]),
                            headers=headers, timeout=30)
    assert [sized.status_code, chunked.status_code] == [413, 413], (sized.text, chunked.text)
    assert chunked.headers["Content-Type"] == "application/problem+json"
