-- Live leases (pending, acquired, active) per resource, kept by every lease
-- write in the same transaction, so the allocator can skip full resources
-- through an index instead of counting the leases of every resource.
ALTER TABLE resources ADD COLUMN live_leases BIGINT NOT NULL DEFAULT 0;
UPDATE resources SET live_leases = (
    SELECT COUNT(*) FROM leases
    WHERE leases.resource_id = resources.id AND leases.status IN ('pending', 'acquired', 'active')
);
DROP INDEX resources_blueprint;
CREATE INDEX resources_room ON resources(blueprint_id, status, live_leases);
