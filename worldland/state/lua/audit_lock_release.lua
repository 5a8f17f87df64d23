-- Audit._release_lock: delete the audit lock only if this pass still holds it (its token).
--
-- KEYS[1]   Keys.audit_lock
-- ARGV[1]   this pass's lock token
--
-- Returns 1 when released, 0 when the lock is gone or held by another pass.

if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
