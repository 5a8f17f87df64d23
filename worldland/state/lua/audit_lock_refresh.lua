-- Audit._refresh_lock: extend the audit lock's expiry only if this pass still holds it (its token).
--
-- KEYS[1]   Keys.audit_lock
-- ARGV[1]   this pass's lock token
-- ARGV[2]   the new time to live (milliseconds)
--
-- Returns 1 when refreshed, 0 when the lock is gone or held by another pass.

if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
