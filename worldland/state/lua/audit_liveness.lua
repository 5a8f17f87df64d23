-- Audit._run_liveness: decide whether one provider in a live state (LIVE_STATES, from the generated
-- header) has gone quiet and, with apply '1', move it Offline in the same script, so the rule lives
-- here only and a beat arriving meanwhile always wins. Quiet means: its last beat (since approval)
-- is older than the beat cutoff or, never beaten since approval, its approval is older than the
-- grace cutoff. Composed as script("transition_functions", "audit_liveness").
--
-- KEYS[1]       the provider's hash (Keys.provider(id))
-- KEYS[2..]     ProviderStore.transition_keys() (see transition_functions.lua), whose last entry is
--               Keys.awaiting_first_beat, the grace set
-- KEYS[last]    the heartbeat index (right after them: after_transition_keys(2))
-- ARGV[1]       provider id
-- ARGV[2]       now (epoch seconds)
-- ARGV[3]       beat cutoff: a beat at or after it is fresh
-- ARGV[4]       grace cutoff: an approval at or after it is still in its grace period
-- ARGV[5]       the status reason for going Offline
-- ARGV[6]       apply: '1' transition; '0' only classify (writes nothing)
--
-- Returns {outcome, status, previous}: outcome 'unknown' | 'not_live' | 'fresh' | 'grace' | 'due'
-- (apply '0') | transition()'s 'ok' (went Offline). With apply '1' it also drops the provider from
-- the grace set once it is out of it for good (beaten since approval, not live, gone Offline).

local pid, apply = ARGV[1], ARGV[6] == '1'
local awaiting = awaiting_key(2)
local heartbeat_index = KEYS[after_transition_keys(2)]
local fields = redis.call('HMGET', KEYS[1], 'status', 'approved_at')
local current = fields[1]
if not current then
  if apply then redis.call('ZREM', awaiting, pid) end
  return {'unknown', '', ''}
end
if not LIVE_STATES[current] then
  if apply then redis.call('ZREM', awaiting, pid) end
  return {'not_live', current, ''}
end
local beat = tonumber(redis.call('ZSCORE', heartbeat_index, pid))
local approved = tonumber(fields[2]) or 0
if beat and beat >= approved then
  if apply then redis.call('ZREM', awaiting, pid) end
  if beat >= tonumber(ARGV[3]) then return {'fresh', current, ''} end
elseif approved >= tonumber(ARGV[4]) then
  return {'grace', current, ''}
end
if not apply then return {'due', current, ''} end
redis.call('ZREM', awaiting, pid)
return transition(KEYS[1], pid, 2, current, 'offline', ARGV[2], ARGV[5])
