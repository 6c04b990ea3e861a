-- Fewer index pages per commit. A task changes state three times (queued,
-- claimed, done) and every index naming `state` was rewritten at each
-- change. Partial indexes hold a task only while it is in the state they
-- serve, and the object index no longer names the state, so a change
-- touches only the indexes the task enters or leaves.
DROP INDEX tasks_runnable;
DROP INDEX tasks_claimed;
DROP INDEX tasks_object;
CREATE INDEX tasks_queued ON tasks(run_at) WHERE state = 'queued';
-- Claimed tasks are few (one per busy worker): the index serves expired
-- claims and, scanned whole, the claim's "not running elsewhere" check.
CREATE INDEX tasks_claimed ON tasks(claim_expires_at, object_key) WHERE state = 'claimed';
CREATE INDEX tasks_object ON tasks(object_key);
-- Garbage collection of finished tasks.
CREATE INDEX tasks_finished ON tasks(finished_at) WHERE state IN ('done', 'failed');

-- Most log events name no blueprint, and a pending lease's none a
-- resource: keep them out of those indexes (queries ask for one id).
DROP INDEX logs_blueprint;
DROP INDEX logs_resource;
CREATE INDEX logs_blueprint ON logs(blueprint_id, id) WHERE blueprint_id IS NOT NULL;
CREATE INDEX logs_resource ON logs(resource_id, id) WHERE resource_id IS NOT NULL;

-- Consuming a command no longer moves its entry: the target's commands are
-- few, and the unconsumed ones are also in `commands_unconsumed`.
DROP INDEX commands_target;
CREATE INDEX commands_target ON commands(target_kind, target_id, id);
