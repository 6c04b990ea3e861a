-- resources.live_leases is now written when the transaction commits, not
-- when the lease row is: a lease write no longer holds its resource's row
-- lock for the rest of its transaction, so the leases of one busy resource
-- (many leases on one host) no longer queue for it one transaction at a
-- time. Lease acquisition shares the row (FOR KEY SHARE), and release,
-- reclaim and break still lock it (FOR UPDATE), so they still see every
-- lease acquired before them and are seen by every one after.
--
-- And a lease that stays live on the same resource (acquired -> active)
-- no longer moves the count down and up again: only a change of
-- liveness or of resource writes the resource row.
CREATE OR REPLACE FUNCTION leases_live_count() RETURNS trigger AS $$
DECLARE
    was_live BOOLEAN := FALSE;
    is_live BOOLEAN := FALSE;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        was_live := OLD.resource_id IS NOT NULL
            AND OLD.status IN ('pending', 'acquired', 'active');
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        is_live := NEW.resource_id IS NOT NULL
            AND NEW.status IN ('pending', 'acquired', 'active');
    END IF;
    IF was_live AND is_live AND OLD.resource_id = NEW.resource_id THEN
        RETURN NULL;
    END IF;
    IF was_live THEN
        UPDATE resources SET live_leases = live_leases - 1 WHERE id = OLD.resource_id;
    END IF;
    IF is_live THEN
        UPDATE resources SET live_leases = live_leases + 1 WHERE id = NEW.resource_id;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER leases_live_count ON leases;
CREATE CONSTRAINT TRIGGER leases_live_count
AFTER INSERT OR UPDATE OF status, resource_id OR DELETE ON leases
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION leases_live_count();
