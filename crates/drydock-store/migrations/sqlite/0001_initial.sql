-- Drydock schema, SQLite dialect. Keep in step with ../postgres/0001_initial.sql:
-- a conformance test compares the tables and columns of both.
-- Timestamps are integer milliseconds since the Unix epoch.

CREATE TABLE blueprints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    fields TEXT NOT NULL DEFAULT '{}',
    disabled BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    modified_at BIGINT NOT NULL
);

CREATE TABLE blueprint_edits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    blueprint_id BIGINT NOT NULL REFERENCES blueprints(id),
    author TEXT NOT NULL,
    field TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    epoch BIGINT NOT NULL
);
CREATE INDEX blueprint_edits_blueprint ON blueprint_edits(blueprint_id, id);

CREATE TABLE resources (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    blueprint_id BIGINT NOT NULL REFERENCES blueprints(id),
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    until_at BIGINT,
    attributes TEXT NOT NULL DEFAULT '{}',
    failure TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    fence BIGINT NOT NULL DEFAULT 0,
    last_used_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    modified_at BIGINT NOT NULL
);
CREATE INDEX resources_blueprint ON resources(blueprint_id, status);
CREATE INDEX resources_type ON resources(type, status);

CREATE TABLE leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_type TEXT NOT NULL,
    status TEXT NOT NULL,
    resource_id BIGINT REFERENCES resources(id),
    blueprint_ids TEXT NOT NULL DEFAULT '[]',
    authorizing TEXT NOT NULL,
    owner TEXT,
    attributes TEXT NOT NULL DEFAULT '{}',
    internal TEXT NOT NULL DEFAULT '{}',
    priority BIGINT NOT NULL DEFAULT 0,
    until_at BIGINT,
    waiting TEXT,
    failure TEXT,
    acquired_at BIGINT,
    activated_at BIGINT,
    version BIGINT NOT NULL DEFAULT 1,
    fence BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    modified_at BIGINT NOT NULL
);
CREATE INDEX leases_status ON leases(status, priority, id);
CREATE INDEX leases_resource ON leases(resource_id, status);
CREATE INDEX leases_owner ON leases(owner);

CREATE TABLE commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    author TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id BIGINT NOT NULL,
    command TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}',
    consumed BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    modified_at BIGINT NOT NULL
);
CREATE INDEX commands_target ON commands(target_kind, target_id, consumed, id);

CREATE TABLE logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch BIGINT NOT NULL,
    blueprint_id BIGINT,
    resource_id BIGINT,
    lease_id BIGINT,
    type TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX logs_lease ON logs(lease_id, id);
CREATE INDEX logs_resource ON logs(resource_id, id);
CREATE INDEX logs_blueprint ON logs(blueprint_id, id);
CREATE INDEX logs_epoch ON logs(epoch);

CREATE TABLE slot_locks (
    lock_key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX slot_locks_owner ON slot_locks(owner);

CREATE TABLE authorizations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    blueprint_id BIGINT NOT NULL REFERENCES blueprints(id),
    object TEXT NOT NULL,
    blueprint_state TEXT NOT NULL,
    object_state TEXT NOT NULL,
    decided_by TEXT,
    decided_at BIGINT,
    created_at BIGINT NOT NULL,
    modified_at BIGINT NOT NULL,
    UNIQUE (object, blueprint_id)
);
CREATE INDEX authorizations_blueprint ON authorizations(blueprint_id, blueprint_state);

CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    object_key TEXT,
    state TEXT NOT NULL,
    priority BIGINT NOT NULL DEFAULT 0,
    run_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    claim_owner TEXT,
    claim_expires_at BIGINT,
    claim_token BIGINT NOT NULL DEFAULT 0,
    payload TEXT NOT NULL DEFAULT '{}',
    last_error TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
-- At most one queued task per object: scheduling again coalesces.
CREATE UNIQUE INDEX tasks_one_queued_per_object ON tasks(object_key) WHERE state = 'queued';
CREATE INDEX tasks_runnable ON tasks(state, run_at);
CREATE INDEX tasks_claimed ON tasks(state, claim_expires_at);
CREATE INDEX tasks_object ON tasks(object_key, state);

CREATE TABLE object_locks (
    name TEXT PRIMARY KEY,
    owner TEXT,
    token BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL
);

CREATE TABLE daemons (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    stopped_at BIGINT
);

-- Wake-up edges: "waiter (an object) wants a pass when event happens".
-- Firing an event schedules each waiter's update task at the waiter's
-- rank (priority, then first-come first-served by run_at).
CREATE TABLE wakeups (
    event TEXT NOT NULL,
    waiter TEXT NOT NULL,
    priority BIGINT NOT NULL,
    run_at BIGINT NOT NULL,
    PRIMARY KEY (event, waiter)
);
CREATE INDEX wakeups_waiter ON wakeups(waiter);
