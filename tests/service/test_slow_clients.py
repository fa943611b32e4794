"""Idle and slow clients cannot freeze the API: a real `graft api`, alone and behind the compose front (nginx).

Each attack runs from raw sockets on loopback: 200 connections that send nothing, 200 that send half a request head
and then one more header line every second, 200 anonymous uploads that send their head and the start of a body. The
uploads must get their 401 before any body is read, and be disconnected; while the rest stay open, other clients' requests must answer
within a second, and the half-finished heads and the silent connections must be closed soon after the header
deadline.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
import requests

from graft.cli.serve import HEADER_DEADLINE_S
from tests.helpers import ROOT, TOKEN, api_process, private_env
from tests.service.test_admission import GB, MB, _stream

ATTACKERS = 200  # of each kind
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_HEADER_TIMEOUT_S = 10  # deploy/nginx.conf's client_header_timeout
SLACK_S = 6  # the server's timer, our one-second polling and a loaded CI machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _nginx(upstream: str, base: Path) -> Iterator[str]:
    """deploy/nginx.conf, as compose runs it, in front of upstream: only the addresses and the paths are changed."""
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    port = _free_port()
    assert "server api:8000;" in conf and "listen 8080;" in conf
    conf = conf.replace("server api:8000;", f"server {upstream};").replace("listen 8080;", f"listen 127.0.0.1:{port};")
    temp = base / "nginx"
    temp.mkdir()
    paths = "".join(f"    {kind}_temp_path {temp / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                            "scgi"))
    conf = conf.replace("http {\n", "http {\n" + paths, 1)
    conf = f"daemon off;\nuser root;\npid {temp / 'nginx.pid'};\nerror_log stderr error;\n" + conf
    (temp / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([NGINX, "-p", str(temp), "-c", str(temp / "nginx.conf")])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start (exit code {proc.poll()})") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


class Front(NamedTuple):
    """What a test reaches: `graft api` alone or behind nginx."""

    url: str
    header_deadline_s: float
    stores: Path  # everything the API and the front may write below it (artifacts, nginx's body buffers)
    nginx: bool


@pytest.fixture(scope="module", params=["graft-api", "nginx-front"])
def front(request: pytest.FixtureRequest, service_env: dict[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """`graft api` as it ships, or behind deploy/nginx.conf as compose runs it."""
    if request.param == "nginx-front" and not Path(NGINX).exists():
        if os.environ.get("GRAFT_REQUIRE_NGINX"):
            pytest.fail("GRAFT_REQUIRE_NGINX is set but nginx is not installed")
        pytest.skip("Debian's nginx is not installed (.ci/run installs it)")
    base = tmp_path_factory.mktemp(f"slow-{request.param}")
    env = private_env(service_env, base, "graft-slow", GRAFT_ARTIFACTS_DIR=str(base / "artifacts"),
                      GRAFT_MIN_FREE_MB="0")
    with api_process(env) as (url, _proc):
        if request.param == "graft-api":
            yield Front(url, HEADER_DEADLINE_S, base, nginx=False)
        else:
            with _nginx(url.removeprefix("http://"), base) as front_url:
                yield Front(front_url, NGINX_HEADER_TIMEOUT_S, base, nginx=True)


def _connect(url: str, first: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    if first:
        sock.sendall(first)
    sock.setblocking(False)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has answered (a 408 or 401) or closed the connection; False while it is still waiting."""
    try:
        sock.recv(65536)  # an answer, or b"" for a closed connection
        return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def _hung_up(sock: socket.socket) -> bool:
    """True once the server has closed the connection (whatever it answered first); False while it keeps it."""
    try:
        while sock.recv(65536):
            pass  # the rest of an answer
        return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def _timed(url: str, path: str, headers: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    response = requests.get(f"{url}{path}", headers=headers, timeout=5)
    assert response.status_code == 200, (path, response.status_code, response.text[:200])
    return time.monotonic() - started


def test_idle_and_slow_clients_neither_block_others_nor_stay(front: Front) -> None:
    url, deadline_s = front.url, front.header_deadline_s
    opened = time.monotonic()
    idle = [_connect(url, b"") for _ in range(ATTACKERS)]
    slow_heads = [_connect(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") for _ in range(ATTACKERS)]
    uploads = [_connect(url, b"POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                              b"boundary=b\r\nContent-Length: 1000000000\r\n\r\n--b\r\n") for _ in range(ATTACKERS)]
    try:
        # The uploads are answered as soon as their heads are in, before a byte of body is read, and closed.
        answers = set()
        for sock in uploads:
            sock.setblocking(True)
            sock.settimeout(10)
            answers.add(sock.recv(64).split(b" ")[1])
        assert answers == {b"401"}, answers
        # Every second: one more header line on each slow head, and other clients' calls, timed.
        waits: list[float] = []
        open_heads = list(slow_heads)
        while time.monotonic() - opened < deadline_s + SLACK_S:
            for sock in open_heads:
                try:
                    sock.send(b"X-Slow: 1\r\n")
                except OSError:
                    pass
            waits += [_timed(url, "/healthz"), _timed(url, "/api/v1/jobs", {"Authorization": f"Bearer {TOKEN}"})]
            open_heads = [sock for sock in open_heads if not _closed_by_server(sock)]
            time.sleep(1)
        assert max(waits) < 1.0, f"other clients waited up to {max(waits):.2f} s"
        assert not open_heads, f"{len(open_heads)} half-sent request heads still open after {deadline_s + SLACK_S} s"
        still_idle = [sock for sock in idle if not _closed_by_server(sock)]
        assert not still_idle, f"{len(still_idle)} silent connections still open after {deadline_s + SLACK_S} s"
        # A refused upload's connection is closed, not held for the rest of a body nobody will read.
        for sock in uploads:
            sock.setblocking(False)
        held = [sock for sock in uploads if not _hung_up(sock)]
        assert not held, f"{len(held)} refused uploads still connected after {deadline_s + SLACK_S} s"
    finally:
        for sock in idle + slow_heads + uploads:
            sock.close()


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix not in (".pid", ".conf"))


def test_an_anonymous_gigabyte_is_refused_before_it_is_read(front: Front) -> None:
    before = _files(front.stores)
    status, body, sent, after = _stream(front.url, "/api/v1/uploads", GB, {})
    assert status == 401 and "bearer token" in body["error"], body
    assert sent < 32 * MB, f"the 401 came after {sent / MB:.1f} MB"
    if not front.nginx:  # nginx reads on for up to its lingering_time (5 s), discarding: it writes none of it
        assert after < 32 * MB, f"the server read {after / MB:.1f} MB more after refusing"
    assert _files(front.stores) == before
