#!/usr/bin/env bash
# Makes sure the services integration tests talk to are up: Redis on 127.0.0.1:6379 and
# PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth, database `test`).
# Starts them when installed but down; installs them from Debian's packages when missing.
set -uo pipefail

log() { echo "services: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
pg_up() { command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; }

if ! redis_up; then
  if ! command -v redis-server >/dev/null; then
    log "installing redis-server"
    as_root apt-get update -qq && as_root apt-get install -y -qq redis-server >/dev/null
  fi
  log "starting redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
fi
redis_up && log "redis up" || log "WARNING: redis is not reachable on 127.0.0.1:6379"

if ! pg_up; then
  if ! ls /etc/postgresql >/dev/null 2>&1; then
    log "installing postgresql"
    as_root apt-get update -qq && as_root apt-get install -y -qq postgresql >/dev/null
  fi
  log "starting postgresql"
  for v in $(ls /etc/postgresql 2>/dev/null); do as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || true; done
  for _ in $(seq 1 100); do pg_up && break; sleep 0.1; done
fi
if pg_up; then
  log "postgresql up"
  # The tests use database `test`; create it when a fresh install lacks it.
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" 2>/dev/null | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null 2>&1 || true
else
  log "WARNING: postgresql is not reachable on 127.0.0.1:5432"
fi
exit 0
