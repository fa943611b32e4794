"""graft.client: a Python client for the Graft HTTP API (stdlib and requests only; the CLI is built on it)."""
from graft.client.client import Client, Upload
from graft.client.errors import (AuthError, BadRequest, Conflict, GraftError, NotFound, QuotaExceeded, Unavailable,
                                 WaitTimeout)

__all__ = ["AuthError", "BadRequest", "Client", "Conflict", "GraftError", "NotFound", "QuotaExceeded", "Unavailable",
           "Upload", "WaitTimeout"]
