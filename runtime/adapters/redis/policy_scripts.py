"""The one atomic write: policy, version, history record, event and trace index together.

Run as a Lua script, so Redis applies all of it or none of it, and no reader can see a
version without its event on the stream (or the event without the version).

KEYS: policy hash, history sorted set, policy.updated stream, trace index list.
ARGV: base version, new version, policy bytes, change-record bytes, envelope bytes,
      stream MAXLEN (approximate), trace index TTL in seconds, rule.
rule ``cas``: write only when the stored version equals the base version (a normal change).
rule ``newer``: write only when the stored version is lower than the new version (putting a
known policy back into a Redis that lost it; an empty Redis is version 0).

Returns ``{1, stream entry id}`` when written, else ``{0, stored version, stored policy
bytes, stored entry id}`` so the caller can retry or report a conflict without another trip.
"""

from __future__ import annotations

WRITE_POLICY = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local new_version = tonumber(ARGV[2])
local allowed
if ARGV[8] == 'cas' then
  allowed = stored == tonumber(ARGV[1])
else
  allowed = stored < new_version
end
if not allowed then
  return {0, stored, redis.call('HGET', KEYS[1], 'policy') or '',
          redis.call('HGET', KEYS[1], 'event_id') or ''}
end
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'envelope', ARGV[5])
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'policy', ARGV[3], 'event_id', id)
if ARGV[8] == 'cas' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], ARGV[2], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
elseif redis.call('ZCOUNT', KEYS[2], ARGV[2], ARGV[2]) == 0 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
end
redis.call('RPUSH', KEYS[4], ARGV[5])
redis.call('EXPIRE', KEYS[4], ARGV[7])
return {1, id}
"""
