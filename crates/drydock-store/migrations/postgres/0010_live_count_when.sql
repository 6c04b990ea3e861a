-- The live-lease count's trigger is queued only for lease writes that can
-- move the count (as SQLite's trigger already is, by its WHEN clause): a
-- new lease (pending, no resource), acquired -> active and released ->
-- destroyed queue nothing to run at commit. Same function, same deferral
-- (migration 0009); PostgreSQL allows a WHEN clause referring to OLD only
-- on UPDATE and DELETE triggers, hence three triggers.
DROP TRIGGER leases_live_count ON leases;

CREATE CONSTRAINT TRIGGER leases_live_count_insert
AFTER INSERT ON leases
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
WHEN (NEW.resource_id IS NOT NULL)
EXECUTE FUNCTION leases_live_count();

CREATE CONSTRAINT TRIGGER leases_live_count_update
AFTER UPDATE OF status, resource_id ON leases
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
WHEN (OLD.resource_id IS DISTINCT FROM NEW.resource_id
   OR (OLD.status IN ('pending', 'acquired', 'active'))
      IS DISTINCT FROM (NEW.status IN ('pending', 'acquired', 'active')))
EXECUTE FUNCTION leases_live_count();

CREATE CONSTRAINT TRIGGER leases_live_count_delete
AFTER DELETE ON leases
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
WHEN (OLD.resource_id IS NOT NULL)
EXECUTE FUNCTION leases_live_count();
