"""Users and tokens (graft.shared.users) on SQLite: names, hashed tokens, authentication, last use, revocation,
usage, and the `graft users`/`graft tokens` commands."""
from __future__ import annotations

import hashlib
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from graft.shared import users
from graft.shared.db import get_engine, session_factory
from graft.shared.lifecycle import create_job
from graft.shared.models import SERVER_PATH, UPLOAD, ApiToken, DatasetRecord, TrainedModel, Upload, new_id, utcnow
from graft.shared.schema import upgrade


@pytest.fixture(scope="module")
def at_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite database at head, made once (migrating takes longer than a test here)."""
    path = tmp_path_factory.mktemp("users") / "head.db"
    upgrade(f"sqlite:///{path}")
    get_engine(f"sqlite:///{path}").dispose()
    return path


@pytest.fixture()
def session(at_head: Path, tmp_path: Path) -> Iterator[Session]:
    """A session on a fresh copy of that database."""
    shutil.copy(at_head, tmp_path / "graft.db")
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    with session_factory(url)() as s:
        yield s
    get_engine(url).dispose()


@pytest.mark.parametrize("name", ["", "-leading-dash", "has space", "a/b", "x" * 65, "é"])
def test_a_user_name_must_be_plain(session: Session, name: str) -> None:
    with pytest.raises(users.UserError, match="invalid user name"):
        users.add_user(session, name)


def test_names_are_unique(session: Session) -> None:
    users.add_user(session, "alice")
    with pytest.raises(users.UserError, match="already exists"):
        users.add_user(session, "alice")
    with pytest.raises(users.UserError, match="no user called"):
        users.get_user(session, "bob")


def test_a_token_is_stored_only_as_its_hash_and_authenticates_its_user(session: Session) -> None:
    alice = users.add_user(session, "alice")
    row, token = users.create_token(session, alice)
    session.commit()
    assert token.startswith(f"gft_{row.id}_") and len(token) > 50
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    dump = "\n".join(str(r) for r in session.execute(text("SELECT * FROM api_tokens")).all())
    secret = token.removeprefix(f"gft_{row.id}_")  # token_urlsafe may itself contain "_": cut the prefix, not at "_"
    assert token not in dump and secret not in dump  # neither the token nor its secret
    assert users.authenticate(session, token).name == "alice"
    for wrong in (token[:-1] + ("A" if token[-1] != "A" else "B"), "gft_", "test-token", row.token_hash):
        assert users.authenticate(session, wrong) is None


def test_last_use_is_written_at_most_once_a_minute(session: Session) -> None:
    row, token = users.create_token(session, users.add_user(session, "alice"))
    session.commit()
    assert row.last_used_at is None
    start = utcnow()
    users.authenticate(session, token, now=start)
    session.expire_all()
    assert session.get(ApiToken, row.id).last_used_at is not None
    first = session.get(ApiToken, row.id).last_used_at
    users.authenticate(session, token, now=start + timedelta(seconds=30))  # within the minute: not written
    session.expire_all()
    assert session.get(ApiToken, row.id).last_used_at == first
    users.authenticate(session, token, now=start + timedelta(seconds=61))
    session.expire_all()
    assert session.get(ApiToken, row.id).last_used_at > first


@pytest.mark.parametrize("how", ["public id", "bare id", "whole token"])
def test_a_revoked_token_no_longer_authenticates(session: Session, how: str) -> None:
    alice = users.add_user(session, "alice")
    row, token = users.create_token(session, alice)
    _other, kept = users.create_token(session, alice)
    session.commit()
    given = {"public id": users.public_id(row), "bare id": row.id, "whole token": token}[how]
    assert users.revoke(session, given).id == row.id
    session.commit()
    assert users.authenticate(session, token) is None
    assert users.authenticate(session, kept).name == "alice"  # her other token still works
    assert [n for _u, n in users.list_users(session)] == [1]


@pytest.mark.parametrize("given", ["gft_000000000000", "nonsense", "", "gft_{id}_not-the-secret"])
def test_revoking_something_that_is_not_a_token_says_so(session: Session, given: str) -> None:
    row, token = users.create_token(session, users.add_user(session, "alice"))
    session.commit()
    with pytest.raises(users.UserError, match="no token"):
        users.revoke(session, given.format(id=row.id))
    assert users.authenticate(session, token) is not None


def test_has_live_tokens_and_listing(session: Session) -> None:
    assert not users.has_live_tokens(session)
    alice, bob = users.add_user(session, "alice"), users.add_user(session, "bob", admin=True)
    row, _ = users.create_token(session, alice)
    users.create_token(session, bob)
    session.commit()
    assert users.has_live_tokens(session)
    assert [(u.name, u.is_admin, n) for u, n in users.list_users(session)] == [("alice", False, 1), ("bob", True, 1)]
    assert [name for _t, name in users.list_tokens(session, "alice")] == ["alice"]
    users.revoke(session, row.id)
    assert len(users.list_tokens(session)) == 2  # revoked ones are listed too, as revoked


def test_usage_counts_active_jobs_and_stored_bytes_of_one_user(session: Session) -> None:
    alice, bob = users.add_user(session, "alice"), users.add_user(session, "bob")
    create_job(session, "train", {}, alice.id)
    done = create_job(session, "train", {}, alice.id)
    done.status = "succeeded"
    create_job(session, "train", {}, bob.id)
    session.add_all([
        DatasetRecord(id=new_id(), name="up", source=UPLOAD, path="/x", size_bytes=1000, owner_id=alice.id),
        DatasetRecord(id=new_id(), name="path", source=SERVER_PATH, path="/y", size_bytes=5000, owner_id=alice.id),
        Upload(id=new_id(), owner_id=alice.id, size_bytes=200),
        Upload(id=new_id(), owner_id=bob.id, size_bytes=7),
        TrainedModel(id=new_id(), job_id=done.id, backbone="resnet18", classes=["a"], image_size=64, path="/m",
                     size_bytes=30, owner_id=alice.id),
    ])
    session.commit()
    # A server folder is the user's own disk, not Graft's: it does not count.
    assert users.usage(session, alice.id) == users.Usage(active_jobs=1, stored_bytes=1230)
    assert users.usage(session, bob.id) == users.Usage(active_jobs=1, stored_bytes=7)
    assert users.limits(alice, 5, 100) == (5, 100)
    alice.max_jobs, alice.max_storage_mb = 0, 2
    assert users.limits(alice, 5, 100) == (0, 2)


def test_the_graft_users_and_tokens_commands(at_head: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Each action of `graft users` and `graft tokens` on a SQLite database (parsed as the console script does)."""
    from graft.cli import users as cli_users
    from graft.cli.main import build_parser
    from graft.shared.config import Config

    shutil.copy(at_head, tmp_path / "graft.db")
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    monkeypatch.setattr(cli_users, "get_config", lambda: Config(database_url=url))

    def graft(*argv: str) -> list[str]:
        args = build_parser().parse_args(list(argv))
        assert args.func(args) == 0
        return capsys.readouterr().out.strip().splitlines()

    token = graft("users", "add", "alice", "--max-jobs", "2")[-1]
    admin_token = graft("users", "add", "ops", "--admin")[-1]
    assert graft("users", "set", "alice", "--max-storage-mb", "0", "--max-jobs", "-1") == [
        "alice: admin=false max_jobs=default max_storage_mb=unlimited"]
    second = graft("tokens", "create", "alice")[-1]
    listed = graft("users", "list")
    assert listed[1].split()[:5] == ["alice", "no", "2", "default", "unlimited"] and listed[2].split()[1] == "yes"
    with session_factory(url)() as session:
        assert users.authenticate(session, token).name == "alice"
        assert users.authenticate(session, admin_token).is_admin
        public = users.public_id(users.list_tokens(session, "alice")[0][0])
    assert graft("tokens", "revoke", token) == [f"revoked {public}"]
    rows = graft("tokens", "list", "alice")
    assert len(rows) == 3 and rows[1].startswith(public) and rows[1].split()[-1] != "-"  # revoked, with its time
    with session_factory(url)() as session:
        assert users.authenticate(session, token) is None and users.authenticate(session, second).name == "alice"
    with pytest.raises(cli_users.ClientError, match="already exists"):
        graft("users", "add", "alice")
    get_engine(url).dispose()
