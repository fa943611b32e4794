"""507 for uploads while the artifacts disk is nearly full: refused before a byte of the body is stored."""
from __future__ import annotations

from flask import request

from graft.api.context import config
from graft.api.errors import APIError
from graft.shared.retention import artifacts_disk


def refuse_uploads_when_disk_is_nearly_full() -> None:
    """Answer 507 to a multipart POST (every upload is one) when less than GRAFT_MIN_FREE_MB is free."""
    if request.method != "POST" or request.mimetype != "multipart/form-data":
        return
    cfg = config()
    free, nearly_full = artifacts_disk(cfg)
    if nearly_full:
        raise APIError(507, f"the server's disk is nearly full ({free // 2**20} MB free, less than GRAFT_MIN_FREE_MB="
                            f"{cfg.min_free_mb}); uploads are refused until space is freed (graft gc)",
                       free_bytes=free)
