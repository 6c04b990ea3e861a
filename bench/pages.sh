#!/usr/bin/env bash
# Web UI and API page times with 10,000 leases and 100,000 log events
# (SQLite, release build). Prints three timings per page, in seconds.
# Usage: bash bench/pages.sh   (from the repository root)
set -euo pipefail
cargo build --release -q
bin="$PWD/target/release/drydock"
dir="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"
"$bin" --database sqlite://p.db migrate >/dev/null
"$bin" --database sqlite://p.db blueprint create --type host.local --name local --set root="$dir/l" >/dev/null
sqlite3 p.db "
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 10000)
INSERT INTO leases (resource_type, status, authorizing, owner, created_at, modified_at)
SELECT 'host', CASE WHEN i % 10 = 0 THEN 'pending' ELSE 'destroyed' END, 'drydock', 'bench', 1795990000000+i, 1795990000000+i FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 100000)
INSERT INTO logs (epoch, lease_id, type, data) SELECT 1795990000000+i, 1 + (i % 10000), 'lease.queued', '{}' FROM n;"
token="$("$bin" --database sqlite://p.db --json token create --name bench --role admin | sed -n 's/.*"secret": "\(ddt_[0-9a-f]*\)".*/\1/p')"
"$bin" --database sqlite://p.db serve --listen 127.0.0.1:6262 >/dev/null 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null localhost:6262/healthz && break; sleep 0.1; done
for p in / /leases "/leases?status=pending" "/leases?before=5000" /leases/5000 /resources /logs \
         "/logs?lease=5000" /metrics "/api/v1/leases?limit=1000" "/api/v1/leases?status=pending&limit=100"; do
  for _ in 1 2 3; do
    curl -sf -o /dev/null -w "%{time_total} " -H "Authorization: Bearer $token" "localhost:6262$p"
  done
  echo " $p"
done
