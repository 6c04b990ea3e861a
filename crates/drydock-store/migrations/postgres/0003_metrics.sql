-- Metrics count unconsumed commands; keep that a small index scan.
CREATE INDEX commands_unconsumed ON commands(id) WHERE consumed = 0;
