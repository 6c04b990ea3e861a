-- A task queued (inserted, folded into, awakened or requeued) for an object
-- whose task runs under a claim marks that running task `rerun`: its
-- completion reads the mark and tells the idle workers, who did not count
-- the waiting task due while the claim lived. The mark is written to the
-- running task's row, so the two writes are ordered by its row lock: if
-- the queueing commits first, the completion (which waits for it) reads
-- the mark; if the completion commits first, the queueing finds no claimed
-- task to mark, and its own notification finds the object free. (SQLite
-- has one writer, and its watch looks at every commit it sees.)
ALTER TABLE tasks ADD COLUMN rerun BOOLEAN NOT NULL DEFAULT false;

CREATE FUNCTION tasks_mark_rerun() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tasks SET rerun = true
    WHERE object_key = NEW.object_key AND state = 'claimed' AND NOT rerun;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_mark_rerun_insert
AFTER INSERT ON tasks
FOR EACH ROW
WHEN (NEW.state = 'queued' AND NEW.object_key IS NOT NULL)
EXECUTE FUNCTION tasks_mark_rerun();

CREATE TRIGGER tasks_mark_rerun_update
AFTER UPDATE OF run_at, state ON tasks
FOR EACH ROW
WHEN (NEW.state = 'queued' AND NEW.object_key IS NOT NULL)
EXECUTE FUNCTION tasks_mark_rerun();
