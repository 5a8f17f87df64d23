-- Shared by every script that changes a status: the one Lua home of the transition rule. Put it
-- after the generated header (ALLOWED, STATUS_ORDER, NODE_STATES come from worldland.domain.lifecycle)
-- and before the script's body: script("transition_functions", <body>).
--
-- KEYS[first_index .. first_index + 7]: ProviderStore.transition_keys(), in that order:
--   first_index + 0 .. + 5  the six status index sets, in STATUS_ORDER
--   first_index + 6         Keys.node_sync (sorted set: providers whose node needs a label/taint sync)
--   first_index + 7         Keys.awaiting_first_beat (sorted set: approved, not beaten yet; by approval)
-- ARGV: not read here; the script's body passes the values (id, target, now, reason) as arguments.
--
-- transition(provider_key, provider_id, first_index, current, target, now, reason) moves a provider
-- whose status is ``current`` to ``target``. Besides the status (and its index sets), it records
-- ``approved_at`` and enters the grace-period set on Pending -> Approved, keeps ``previous_status``
-- while Offline (recovery must return to it), drops ``rejected_by`` when leaving Rejected, and marks
-- the node for a label/taint sync when a node state is involved.
-- Returns {outcome, current, previous}: outcome 'ok' | 'noop' (already there) | 'illegal' (not in
-- ALLOWED) | 'illegal_recovery' (offline, and target is not the state held before); nothing is
-- written unless 'ok'.

-- The status index set of ``status``: KEYS[first_index + its place in STATUS_ORDER].
local function index_key(first_index, status)
  for i, name in ipairs(STATUS_ORDER) do
    if name == status then return KEYS[first_index + i - 1] end
  end
end

local function transition(provider_key, provider_id, first_index, current, target, now, reason)
  if current == target then return {'noop', current, ''} end
  local previous = redis.call('HGET', provider_key, 'previous_status') or ''
  if not ALLOWED[current][target] then return {'illegal', current, previous} end
  if current == 'offline' and target ~= previous then return {'illegal_recovery', current, previous} end
  if current == 'rejected' then redis.call('HDEL', provider_key, 'rejected_by') end
  if target == 'offline' then
    redis.call('HSET', provider_key, 'previous_status', current)
  elseif current == 'offline' then
    redis.call('HDEL', provider_key, 'previous_status')
  end
  if target == 'approved' and current == 'pending' then
    redis.call('HSET', provider_key, 'approved_at', now)
    redis.call('ZADD', KEYS[first_index + 7], now, provider_id)
  end
  redis.call('HSET', provider_key, 'status', target, 'status_changed_at', now, 'status_reason', reason)
  redis.call('SREM', index_key(first_index, current), provider_id)
  redis.call('SADD', index_key(first_index, target), provider_id)
  if NODE_STATES[current] or NODE_STATES[target] then
    redis.call('ZINCRBY', KEYS[first_index + 6], 1, provider_id)
  end
  return {'ok', current, previous}
end
