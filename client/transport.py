"""The HTTP layer under Client: a requests session with urllib3 retries, JSON errors as exceptions, paging."""
from __future__ import annotations

import logging
from typing import Any, Iterator
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from graft.client.errors import GraftError, Unavailable, error_for

log = logging.getLogger(__name__)

JSON = dict[str, Any]
RETRY_STATUSES = (502, 503, 504)  # a proxy or the API restarting: worth another try; a 500 is a bug, not retried
# Retried on 502/503/504 and on read errors: only methods that are safe to send twice. A POST (submit a job, start
# an upload, cancel) is retried only when the connection failed before the request was sent (urllib3's `connect`
# count covers every method), because a POST the server may have acted on could create a second job.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def make_retry(retries: int, backoff: float) -> Retry:
    """urllib3's Retry for the client: connection errors for every method, 502/503/504 for idempotent ones."""
    return Retry(total=None, connect=retries, read=retries, status=retries, other=0, backoff_factor=backoff,
                 status_forcelist=RETRY_STATUSES, allowed_methods=IDEMPOTENT, raise_on_status=False,
                 respect_retry_after_header=True)


class Transport:
    """Sends requests to one Graft API with an optional bearer token; answers are JSON or GraftError."""

    def __init__(self, url: str, token: str | None, timeout: float, retries: int, backoff: float) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=make_retry(retries, backoff))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def send(self, method: str, path: str, ok: tuple[int, ...] = (), **kwargs: Any) -> requests.Response:
        """The response to method path (or a full URL), raising the GraftError its status calls for."""
        kwargs.setdefault("timeout", self.timeout)
        url = path if path.startswith(("http://", "https://")) else f"{self.url}{path}"
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.ConnectionError as exc:
            raise Unavailable(f"cannot reach the Graft API at {self.url} (is `graft api` running? set --url or "
                              f"GRAFT_URL): {type(exc).__name__}") from exc
        except requests.Timeout as exc:
            raise Unavailable(f"the Graft API at {self.url} did not answer in time") from exc
        except requests.RequestException as exc:
            raise GraftError(f"request to {url} failed: {exc}") from exc
        if response.status_code >= 400 and response.status_code not in ok:
            with response:
                raise error_for(response.status_code, _body(response))
        return response

    def json(self, method: str, path: str, ok: tuple[int, ...] = (), **kwargs: Any) -> JSON:
        """The JSON answer to method path."""
        with self.send(method, path, ok, **kwargs) as response:
            body = _body(response)
        if not isinstance(body, dict):
            raise GraftError(f"expected JSON from {path}, got: {str(body)[:200]}", response.status_code, body)
        return body

    def pages(self, path: str, params: dict[str, Any]) -> Iterator[JSON]:
        """Every item of a paged list, following each page's "next" link until it is null."""
        page = self.json("GET", path, params={k: v for k, v in params.items() if v is not None})
        while True:
            yield from page["items"]
            if not page.get("next") or not page["items"]:
                return
            # "next" already carries the filters and the page size; it is resolved like a link in a page.
            page = self.json("GET", urljoin(f"{self.url}/", page["next"]))


def _body(response: requests.Response) -> Any:  # noqa: ANN401 - JSON or text
    try:
        return response.json()
    except ValueError:
        return response.text
