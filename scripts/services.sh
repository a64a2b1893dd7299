#!/usr/bin/env bash
# Install (from Debian packages, when missing) and start the servers the tests use:
# Redis on 127.0.0.1:$REDIS_PORT and PostgreSQL on 127.0.0.1:$PGPORT, each private to this
# project, with their data under $SERVICES_DIR. Safe to run again: running servers are kept.
set -euo pipefail

SERVICES_DIR=${SERVICES_DIR:-/tmp/django-celery-monitor-services}
REDIS_PORT=${REDIS_PORT:-6390}
PGPORT=${PGPORT:-5439}

apt_install() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
    command -v chromium >/dev/null || missing+=(chromium)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "Installing ${missing[*]} from Debian packages..."
        if [ "$(id -u)" -ne 0 ]; then
            echo "Need root to install ${missing[*]}." >&2
            exit 1
        fi
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

start_redis() {
    mkdir -p "$SERVICES_DIR/redis"
    if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
        return
    fi
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --save "" \
        --appendonly no --dir "$SERVICES_DIR/redis" --logfile "$SERVICES_DIR/redis/redis.log"
    for _ in $(seq 50); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "Redis did not start; see $SERVICES_DIR/redis/redis.log" >&2
    exit 1
}

start_postgresql() {
    local bin data run_as=()
    bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1)")
    data="$SERVICES_DIR/postgresql"
    mkdir -p "$SERVICES_DIR"
    chmod 755 "$SERVICES_DIR"
    if [ "$(id -u)" -eq 0 ]; then
        run_as=(runuser -u postgres --)
        mkdir -p "$data"
        chown postgres "$data"
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        "${run_as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    if ! "${run_as[@]}" "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        "${run_as[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
            -o "-p $PGPORT -k $data -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    fi
}

case "${1:-start}" in
    start)
        apt_install
        start_redis
        start_postgresql
        echo "Redis on 127.0.0.1:$REDIS_PORT, PostgreSQL on 127.0.0.1:$PGPORT"
        ;;
    stop)
        redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
        bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1)")
        if [ "$(id -u)" -eq 0 ]; then
            runuser -u postgres -- "$bin/pg_ctl" -D "$SERVICES_DIR/postgresql" stop >/dev/null 2>&1 || true
        else
            "$bin/pg_ctl" -D "$SERVICES_DIR/postgresql" stop >/dev/null 2>&1 || true
        fi
        ;;
    *)
        echo "usage: $0 [start|stop]" >&2
        exit 2
        ;;
esac
