-- A lease that stays live on the same resource (acquired -> active) no
-- longer moves resources.live_leases down and up again: only a change of
-- liveness or of resource writes the resource row (two page writes fewer
-- per activation). (On PostgreSQL this migration also moves the count's
-- write to commit time; SQLite's writes are serial, nothing to gain.)
DROP TRIGGER leases_live_update;
CREATE TRIGGER leases_live_update AFTER UPDATE OF status, resource_id ON leases
WHEN OLD.resource_id IS NOT NEW.resource_id
  OR (OLD.status IN ('pending', 'acquired', 'active')) IS NOT (NEW.status IN ('pending', 'acquired', 'active'))
BEGIN
    UPDATE resources SET live_leases = live_leases - 1
    WHERE id = OLD.resource_id AND OLD.status IN ('pending', 'acquired', 'active');
    UPDATE resources SET live_leases = live_leases + 1
    WHERE id = NEW.resource_id AND NEW.status IN ('pending', 'acquired', 'active');
END;
