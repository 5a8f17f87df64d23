-- Audit._unmark_many: remove node-sync marks whose node was synced. An id is removed only while its
-- score is still the one read before the sync: a mark made while its node was being synced raises
-- the score, so it survives for the next pass.
--
-- KEYS[1]   Keys.node_sync
-- ARGV      id, score, id, score, ...
--
-- Returns how many marks were removed.

local removed = 0
for i = 1, #ARGV, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
