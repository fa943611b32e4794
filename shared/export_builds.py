"""One build per model export: a status record in Redis per (model, format), and a bound on each user's builds.

The API starts a build (`start`) only where no record exists, atomically, so concurrent downloads of the same
model and format share one Celery task; a worker turns the record to "building" (`claim`) and removes it when the
zip or the error file is written (`finish`). Each requester's records are also members of a sorted set scored by
their expiry, which bounds how many builds one user may have waiting at once.

Why Redis and not a table or a file: the state lives minutes, so it needs no migration; SET-if-absent in one Lua
script is atomic across every API process and host; and its TTL frees the record of a build whose message or worker
was lost, where a marker file in the artifacts folder would need a staleness rule of its own (its mtime against a
clock that every host would have to share) and a lock around its check-then-create.
"""
from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass

import redis

QUEUED_TTL_S = 6 * 3600  # a build may wait this long on the batch queue (behind training) before a new one is sent
BUILDING_TTL_S = 1800  # a worker lost mid-build frees the record after this long; an export takes seconds to minutes
FAILED_HOLD_S = 600  # a failed build is reported for this long; only the next request after it builds again
QUEUED, BUILDING = "queued", "building"

# KEYS: the record, the requester's set. ARGV: requester, now, ttl, limit (0: none), member.
# Returns {1, "queued"}: started; {0, state}: shared with a build already recorded; {-1, held}: past the limit.
_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {0, state} end
local limit = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if limit > 0 then
  local held = redis.call('ZCARD', KEYS[2])
  if held >= limit then return {-1, tostring(held)} end
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'by', ARGV[1], 'since', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, 'queued'}
"""
# KEYS: the record. ARGV: token, now, ttl. Returns the requester ('' when none was recorded), or false while
# another worker builds it.
_CLAIM = """
if redis.call('HGET', KEYS[1], 'state') == 'building' then return false end
redis.call('HSET', KEYS[1], 'state', 'building', 'token', ARGV[1], 'since', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('HGET', KEYS[1], 'by') or ''
"""
# KEYS: the record. ARGV: token. Deletes it only while it is still this build's.
_FINISH = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class TooManyBuilds(Exception):
    """The requester already has as many export builds waiting as allowed."""

    def __init__(self, held: int, limit: int) -> None:
        super().__init__(f"{held} export build(s) waiting, {limit} allowed")
        self.held, self.limit = held, limit


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one build: release it with finish()."""

    key: str
    user_key: str | None
    member: str
    token: str


@functools.lru_cache(maxsize=8)
def connect(url: str) -> redis.Redis:
    """One client per Redis URL and process (redis-py's pool reconnects after a fork)."""
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, decode_responses=True)


def _key(namespace: str, model_id: str, fmt: str) -> str:
    return f"graft-export:{namespace}:{model_id}:{fmt}"


def _user_key(namespace: str, user: str) -> str:
    return f"graft-export-user:{namespace}:{user}"


def state(client: redis.Redis, namespace: str, model_id: str, fmt: str) -> str | None:
    """The recorded build's state, "queued" or "building"; None when no build of this export is recorded."""
    return client.hget(_key(namespace, model_id, fmt), "state")


def start(client: redis.Redis, namespace: str, model_id: str, fmt: str, user: str, limit: int) -> bool:
    """Record a build asked for by user: True when the caller must send it, False when one is already recorded.

    Raises TooManyBuilds when user already has limit builds recorded (limit 0: no bound)."""
    code, value = client.eval(_START, 2, _key(namespace, model_id, fmt), _user_key(namespace, user), user,
                              int(time.time()), QUEUED_TTL_S, limit, f"{model_id}:{fmt}")
    if int(code) < 0:
        raise TooManyBuilds(int(value), limit)
    return int(code) == 1


def abandon(client: redis.Redis, namespace: str, model_id: str, fmt: str, user: str) -> None:
    """Undo start() when the task could not be sent."""
    client.delete(_key(namespace, model_id, fmt))
    client.zrem(_user_key(namespace, user), f"{model_id}:{fmt}")


def claim(client: redis.Redis, namespace: str, model_id: str, fmt: str) -> Claim | None:
    """A worker's claim on the build (the record becomes "building"); None while another worker holds it."""
    key, token = _key(namespace, model_id, fmt), uuid.uuid4().hex
    user = client.eval(_CLAIM, 1, key, token, int(time.time()), BUILDING_TTL_S)
    if user is None:
        return None
    member = f"{model_id}:{fmt}"
    user_key = _user_key(namespace, user) if user else None
    if user_key:  # the requester's slot now lasts as long as the build may
        client.zadd(user_key, {member: int(time.time()) + BUILDING_TTL_S}, xx=True)
    return Claim(key, user_key, member, token)


def finish(client: redis.Redis, held: Claim) -> None:
    """Release a claim once the zip or the error file is written: the next request reads the file."""
    client.eval(_FINISH, 1, held.key, held.token)
    if held.user_key:
        client.zrem(held.user_key, held.member)
