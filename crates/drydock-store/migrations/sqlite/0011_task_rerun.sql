-- The column PostgreSQL's migration 0011 adds (a running task marked when
-- a task of its object is queued meanwhile), kept for the same schema on
-- both. SQLite does not need the mark: one writer orders every commit, and
-- the processes' watch looks at every commit it sees.
ALTER TABLE tasks ADD COLUMN rerun INTEGER NOT NULL DEFAULT 0;
