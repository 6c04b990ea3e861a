-- Capacity handed to one waiter (a slot freed on an exclusive resource)
-- instead of broadcast to all: the waiter uses it or hands it on.
CREATE TABLE handoffs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    waiter TEXT NOT NULL,
    event TEXT NOT NULL,
    resource_id BIGINT NOT NULL
);
CREATE INDEX handoffs_waiter ON handoffs(waiter);
