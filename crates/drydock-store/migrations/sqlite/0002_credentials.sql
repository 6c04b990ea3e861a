-- Secrets (SSH private keys), kept apart from blueprint fields. Blueprints
-- refer to them by id; the secret column is never returned by list queries.
CREATE TABLE credentials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
