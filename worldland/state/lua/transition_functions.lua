-- Shared by every script that changes a status: the one Lua home of the transition rule. Put it
-- after the generated header (ALLOWED, STATUS_ORDER, NODE_STATES, LIVE_STATES come from
-- worldland.domain.lifecycle) and before the script's body: script("transition_functions", <body>).
--
-- KEYS[first_index ..]: ProviderStore.transition_keys(), in that order (n = #STATUS_ORDER):
--   first_index + 0 .. + n - 1  the status index sets, one per status, in STATUS_ORDER
--   first_index + n             Keys.node_sync (sorted set: providers whose node needs a label/taint sync)
--   first_index + n + 1         Keys.awaiting_first_beat (sorted set: approved, not beaten yet; by approval)
-- A script's own keys come after them, from after_transition_keys(first_index) on; no script spells
-- these positions as numbers, so a status added to the lifecycle moves nothing by hand.
-- ARGV: not read here; the script's body passes the values (id, target, now, reason) as arguments.
--
-- transition(provider_key, provider_id, first_index, current, target, now, reason) moves a provider
-- whose status is ``current`` to ``target``. Besides the status (and its index sets), it records
-- ``approved_at`` and enters the grace-period set on Pending -> Approved, keeps ``previous_status``
-- while Offline (recovery must return to it), drops ``rejected_by`` when leaving Rejected, leaves the
-- grace-period set on going Removed, and marks the node for a label/taint sync when a node state is
-- involved.
-- Returns {outcome, current, previous}: outcome 'ok' | 'noop' (already there) | 'illegal' (not in
-- ALLOWED) | 'illegal_recovery' (offline, and target is a live state other than the one held before);
-- nothing is written unless 'ok'.

-- The status index set of ``status``: KEYS[first_index + its place in STATUS_ORDER].
local function index_key(first_index, status)
  for i, name in ipairs(STATUS_ORDER) do
    if name == status then return KEYS[first_index + i - 1] end
  end
end

local function node_sync_key(first_index) return KEYS[first_index + #STATUS_ORDER] end
local function awaiting_key(first_index) return KEYS[first_index + #STATUS_ORDER + 1] end
-- The index of the first KEYS entry after ProviderStore.transition_keys().
local function after_transition_keys(first_index) return first_index + #STATUS_ORDER + 2 end

local function transition(provider_key, provider_id, first_index, current, target, now, reason)
  if current == target then return {'noop', current, ''} end
  local previous = redis.call('HGET', provider_key, 'previous_status') or ''
  if not ALLOWED[current][target] then return {'illegal', current, previous} end
  if current == 'offline' and LIVE_STATES[target] and target ~= previous then
    return {'illegal_recovery', current, previous}
  end
  if current == 'rejected' then redis.call('HDEL', provider_key, 'rejected_by') end
  if target == 'offline' then
    redis.call('HSET', provider_key, 'previous_status', current)
  elseif current == 'offline' then
    redis.call('HDEL', provider_key, 'previous_status')
  end
  if target == 'approved' and current == 'pending' then
    redis.call('HSET', provider_key, 'approved_at', now)
    redis.call('ZADD', awaiting_key(first_index), now, provider_id)
  end
  if target == 'removed' then redis.call('ZREM', awaiting_key(first_index), provider_id) end
  redis.call('HSET', provider_key, 'status', target, 'status_changed_at', now, 'status_reason', reason)
  redis.call('SREM', index_key(first_index, current), provider_id)
  redis.call('SADD', index_key(first_index, target), provider_id)
  if NODE_STATES[current] or NODE_STATES[target] then
    redis.call('ZINCRBY', node_sync_key(first_index), 1, provider_id)
  end
  return {'ok', current, previous}
end
