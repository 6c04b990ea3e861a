-- resources.live_leases is kept by triggers, inside the statement that
-- writes the lease: no read of the lease's previous state and no recount
-- per lease write (each a round trip). A lease counts while it is pending,
-- acquired or active on a resource.
CREATE TRIGGER leases_live_insert AFTER INSERT ON leases
WHEN NEW.resource_id IS NOT NULL AND NEW.status IN ('pending', 'acquired', 'active')
BEGIN
    UPDATE resources SET live_leases = live_leases + 1 WHERE id = NEW.resource_id;
END;

CREATE TRIGGER leases_live_update AFTER UPDATE OF status, resource_id ON leases
WHEN OLD.status IS NOT NEW.status OR OLD.resource_id IS NOT NEW.resource_id
BEGIN
    UPDATE resources SET live_leases = live_leases - 1
    WHERE id = OLD.resource_id AND OLD.status IN ('pending', 'acquired', 'active');
    UPDATE resources SET live_leases = live_leases + 1
    WHERE id = NEW.resource_id AND NEW.status IN ('pending', 'acquired', 'active');
END;

CREATE TRIGGER leases_live_delete AFTER DELETE ON leases
WHEN OLD.resource_id IS NOT NULL AND OLD.status IN ('pending', 'acquired', 'active')
BEGIN
    UPDATE resources SET live_leases = live_leases - 1 WHERE id = OLD.resource_id;
END;

UPDATE resources SET live_leases = (
    SELECT COUNT(*) FROM leases
    WHERE leases.resource_id = resources.id AND leases.status IN ('pending', 'acquired', 'active')
);
