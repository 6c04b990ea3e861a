-- resources.live_leases is kept by a trigger, inside the statement that
-- writes the lease: no read of the lease's previous state and no recount
-- per lease write (each a round trip). A lease counts while it is pending,
-- acquired or active on a resource. Increments under the resource's row
-- lock keep concurrent writers exact.
CREATE FUNCTION leases_live_count() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND OLD.status IS NOT DISTINCT FROM NEW.status
       AND OLD.resource_id IS NOT DISTINCT FROM NEW.resource_id THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.resource_id IS NOT NULL
       AND OLD.status IN ('pending', 'acquired', 'active') THEN
        UPDATE resources SET live_leases = live_leases - 1 WHERE id = OLD.resource_id;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.resource_id IS NOT NULL
       AND NEW.status IN ('pending', 'acquired', 'active') THEN
        UPDATE resources SET live_leases = live_leases + 1 WHERE id = NEW.resource_id;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER leases_live_count AFTER INSERT OR UPDATE OF status, resource_id OR DELETE ON leases
FOR EACH ROW EXECUTE FUNCTION leases_live_count();

UPDATE resources SET live_leases = (
    SELECT COUNT(*) FROM leases
    WHERE leases.resource_id = resources.id AND leases.status IN ('pending', 'acquired', 'active')
);
