-- HeartbeatIndex.record_many: one call records a whole batch of heartbeats (per-call overhead,
-- client packing and script dispatch, dominated a call per beat). A beat is scored by *our* receive
-- time; a late duplicate never moves the last beat backwards. A change of active jobs on a node
-- that takes jobs (NODE_STATES, from the generated header) marks it for the audit's label sync
-- (never a write per beat). A beat from an unknown provider, or one out of the fleet (CLOSED_STATES,
-- from the generated header: rejected, removed), is dropped.
--
-- Per-provider keys are <template><provider id> from the templates ``Keys`` gives for an empty id,
-- so keys.py stays the only place that spells key names (a single Redis primary carries the fleet,
-- DESIGN.md; no cluster slots to respect).
-- KEYS[1]   the heartbeat index (sorted set: provider id by last receive time)
-- KEYS[2]   Keys.node_sync (sorted set: providers whose node needs a label/taint sync)
-- ARGV[1]   receive time (epoch seconds)
-- ARGV[2]   provider key template (Keys.provider(''))
-- ARGV[3]   heartbeat key template (Keys.heartbeat(''))
-- ARGV[4..] per beat, three values: provider id, active jobs, the beat as JSON
--
-- Returns, flattened, three values per beat: outcome, status, active_jobs_changed (1 or 0); outcome
-- 'recorded', or 'unknown' (status '') / the closed status itself ('rejected', 'removed') when the beat
-- is dropped (nothing written).

local now, now_n = ARGV[1], tonumber(ARGV[1])
local out = {}
for i = 4, #ARGV, 3 do
  local id, jobs, beat = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local status = redis.call('HGET', ARGV[2] .. id, 'status')
  if not status then
    out[#out + 1] = 'unknown'; out[#out + 1] = ''; out[#out + 1] = 0
  elseif CLOSED_STATES[status] then
    out[#out + 1] = status; out[#out + 1] = status; out[#out + 1] = 0
  else
    local hb = ARGV[3] .. id
    local last = redis.call('HMGET', hb, 'received_at', 'active_jobs')
    local changed = 0
    if now_n >= (tonumber(last[1]) or 0) then
      redis.call('HSET', hb, 'received_at', now, 'active_jobs', jobs, 'beat', beat)
      redis.call('ZADD', KEYS[1], now, id)
      if last[2] ~= jobs then
        changed = 1
        if NODE_STATES[status] then redis.call('ZINCRBY', KEYS[2], 1, id) end
      end
    end
    out[#out + 1] = 'recorded'; out[#out + 1] = status; out[#out + 1] = changed
  end
end
return out
