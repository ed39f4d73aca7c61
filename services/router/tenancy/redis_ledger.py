"""The quota ledger in Redis, shared by every router replica: the same buckets and reservations
as `MemoryLedger`, each operation one Lua script (atomic: no interleaving of replicas can
overspend), timed by Redis's own clock so replicas' clocks do not matter.

Keys share one hash tag (`{switchyard}`), so the scripts touch a single slot (Redis Cluster
keeps them on one node). Buckets: a hash {level, stamp} per limit, expiring once full again;
reservations: a hash per id, with their lease deadlines in one sorted set that `expire` sweeps.
Every call has a timeout (`timeout`): an unreachable Redis raises `LedgerUnavailable` at once,
and the caller fails open or closed as configured, never hangs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.router.tenancy.ledger import STREAM_RETRY_SECONDS, TOKENS, Limit, Verdict

PREFIX = "{switchyard}:quota:"
UNIT_CODE = {TOKENS: 0, "requests": 1, "streams": 2}

# Shared by the scripts: a bucket's level now (refilled since its stamp).
_FILL = """
local function fill(key, cap, period, now)
  local b = redis.call('HMGET', key, 'level', 'stamp')
  local level = tonumber(b[1])
  if level == nil then return cap end
  if period > 0 and level < cap then
    level = math.min(cap, level + (now - tonumber(b[2])) * cap / period)
  end
  return level
end
local function store(key, level, now, cap, period)
  redis.call('HSET', key, 'level', tostring(level), 'stamp', tostring(now))
  if period > 0 then
    redis.call('PEXPIRE', key, math.ceil((cap - level) * period / cap * 1000) + 1000)
  end
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local function refund(rkey, used, now)
  local r = redis.call('HGETALL', rkey)
  local f = {}
  for i = 1, #r, 2 do f[r[i]] = r[i + 1] end
  local tokens = tonumber(f.tokens)
  if used < 0 then used = (f.accepted == '1') and tonumber(f.prompt) or 0 end
  for i = 1, tonumber(f.n) do
    local unit = tonumber(f['u' .. i])
    if unit ~= 1 then
      local key, cap, period = f['k' .. i], tonumber(f['c' .. i]), tonumber(f['p' .. i])
      local back = 1
      if unit == 0 then back = math.max(0, tokens - used) end
      store(key, math.min(cap, fill(key, cap, period, now) + back), now, cap, period)
    end
  end
  redis.call('DEL', rkey)
end
"""

# KEYS: reservation, leases, bucket...; ARGV: id, tokens, prompt, lease, then per bucket
# capacity, period, amount, unit. Returns {granted, failing index, retry ms (-1 never), levels...}
_RESERVE = (
    _FILL
    + """
local now = clock()
local n = #KEYS - 2
local levels = {}
for i = 1, n do
  local cap, period = tonumber(ARGV[1 + 4 * i]), tonumber(ARGV[2 + 4 * i])
  levels[i] = fill(KEYS[2 + i], cap, period, now)
end
for i = 1, n do
  local cap, period, need = tonumber(ARGV[1 + 4 * i]), tonumber(ARGV[2 + 4 * i]),
    tonumber(ARGV[3 + 4 * i])
  if need > levels[i] then
    local retry = -1
    if need <= cap then
      if period > 0 then retry = math.ceil((need - levels[i]) * period / cap * 1000)
      else retry = -2 end
    end
    local out = {0, i, retry}
    for j = 1, n do out[3 + j] = math.floor(levels[j]) end
    return out
  end
end
local fields = {'tokens', ARGV[2], 'prompt', ARGV[3], 'accepted', '0', 'n', tostring(n)}
local out = {1, 0, 0}
for i = 1, n do
  local cap, period, need = tonumber(ARGV[1 + 4 * i]), tonumber(ARGV[2 + 4 * i]),
    tonumber(ARGV[3 + 4 * i])
  levels[i] = levels[i] - need
  store(KEYS[2 + i], levels[i], now, cap, period)
  out[3 + i] = math.floor(levels[i])
  local s = tostring(i)
  table.insert(fields, 'k' .. s); table.insert(fields, KEYS[2 + i])
  table.insert(fields, 'c' .. s); table.insert(fields, ARGV[1 + 4 * i])
  table.insert(fields, 'p' .. s); table.insert(fields, ARGV[2 + 4 * i])
  table.insert(fields, 'u' .. s); table.insert(fields, ARGV[4 + 4 * i])
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
return out
"""
)

# KEYS: reservation, leases; ARGV: id, lease.
_ACCEPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'accepted', '1')
redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[2]), ARGV[1])
return 1
"""

# KEYS: reservation, leases; ARGV: id, used (-1: the prompt when accepted, else nothing).
_SETTLE = (
    _FILL
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
refund(KEYS[1], tonumber(ARGV[2]), clock())
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
)

# KEYS: leases; ARGV: reservation key prefix, batch size.
_EXPIRE = (
    _FILL
    + """
local now = clock()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  local rkey = ARGV[1] .. id
  if redis.call('EXISTS', rkey) == 1 then refund(rkey, -1, now) end
  redis.call('ZREM', KEYS[1], id)
end
return #due
"""
)

# KEYS: bucket...; ARGV: per bucket capacity, period. Returns levels.
_REMAINING = (
    _FILL
    + """
local now = clock()
local out = {}
for i = 1, #KEYS do
  out[i] = math.floor(fill(KEYS[i], tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]), now))
end
return out
"""
)


class LedgerUnavailable(Exception):
    """The shared ledger could not be reached (or answered an error) in time."""


class RedisLedger:
    name = "redis"

    def __init__(self, url: str, *, timeout: float = 1.0, prefix: str = PREFIX) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self._prefix = prefix
        self._leases = prefix + "leases"
        self._redis: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._scripts = {
            name: self._redis.register_script(src)
            for name, src in (
                ("reserve", _RESERVE),
                ("accept", _ACCEPT),
                ("settle", _SETTLE),
                ("expire", _EXPIRE),
                ("remaining", _REMAINING),
            )
        }

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        import redis.exceptions

        try:
            return await self._scripts[script](keys=keys, args=args)
        except (redis.exceptions.RedisError, OSError) as e:
            raise LedgerUnavailable(f"redis at {self.url}: {type(e).__name__}: {e}") from e

    def _res(self, res_id: str) -> str:
        return f"{self._prefix}res:{res_id}"

    def _bucket(self, lim: Limit) -> str:
        return f"{self._prefix}b:{lim.key}"

    async def reserve(
        self, res_id: str, limits: Sequence[Limit], *, tokens: int, prompt: int, lease: float
    ) -> Verdict:
        args: list[Any] = [res_id, tokens, prompt, lease]
        for lim in limits:
            args += [lim.capacity, lim.period, lim.amount(tokens), UNIT_CODE[lim.unit]]
        keys = [self._res(res_id), self._leases, *(self._bucket(lim) for lim in limits)]
        out = await self._run("reserve", keys, args)
        granted, failing, retry_ms = int(out[0]), int(out[1]), int(out[2])
        remaining = {lim.name: int(v) for lim, v in zip(limits, out[3:], strict=True)}
        if granted:
            return Verdict(True, remaining=remaining)
        retry = (
            None
            if retry_ms == -1
            else (STREAM_RETRY_SECONDS if retry_ms == -2 else retry_ms / 1000)
        )
        return Verdict(False, limits[failing - 1], retry, remaining)

    async def accept(self, res_id: str, *, lease: float) -> bool:
        return bool(await self._run("accept", [self._res(res_id), self._leases], [res_id, lease]))

    async def settle(self, res_id: str, *, used: int) -> bool:
        keys = [self._res(res_id), self._leases]
        return bool(await self._run("settle", keys, [res_id, max(0, used)]))

    async def settle_prompt(self, res_id: str) -> bool:
        return bool(await self._run("settle", [self._res(res_id), self._leases], [res_id, -1]))

    async def expire(self) -> int:
        return int(await self._run("expire", [self._leases], [f"{self._prefix}res:", 500]))

    async def remaining(self, limits: Sequence[Limit]) -> dict[str, int]:
        if not limits:
            return {}
        args: list[Any] = []
        for lim in limits:
            args += [lim.capacity, lim.period]
        out = await self._run("remaining", [self._bucket(lim) for lim in limits], args)
        return {lim.name: int(v) for lim, v in zip(limits, out, strict=True)}

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except Exception as e:
            raise LedgerUnavailable(f"redis at {self.url}: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        await self._redis.aclose()
