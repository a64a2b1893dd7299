#!/usr/bin/env bash
# Install (from Debian packages, when missing) and start the servers the tests use:
# Redis on 127.0.0.1:$REDIS_PORT, PostgreSQL on 127.0.0.1:$PGPORT and RabbitMQ on
# 127.0.0.1:$RABBITMQ_PORT, each private to this project, with their data under
# $SERVICES_DIR. Safe to run again: running servers are kept.
set -euo pipefail

SERVICES_DIR=${SERVICES_DIR:-/tmp/django-celery-monitor-services}
REDIS_PORT=${REDIS_PORT:-6390}
PGPORT=${PGPORT:-5439}
RABBITMQ_PORT=${RABBITMQ_PORT:-5673}
RABBITMQ_NODE=cmtest@localhost

apt_install() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
    command -v chromium >/dev/null || missing+=(chromium)
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
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

rabbitmq_env() {
    local data="$SERVICES_DIR/rabbitmq"
    echo HOME=/var/lib/rabbitmq RABBITMQ_NODENAME="$RABBITMQ_NODE" \
        RABBITMQ_NODE_PORT="$RABBITMQ_PORT" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_DIST_PORT=$((RABBITMQ_PORT + 20000)) RABBITMQ_MNESIA_BASE="$data/mnesia" \
        RABBITMQ_LOG_BASE="$data/log" RABBITMQ_PID_FILE="$data/pid" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$data/enabled_plugins"
}

rabbitmq_as() {
    # Debian's RabbitMQ runs as its own user, with its Erlang cookie in its home.
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u rabbitmq -- env $(rabbitmq_env) "$@"
    else
        env $(rabbitmq_env) "$@"
    fi
}

start_rabbitmq() {
    mkdir -p "$SERVICES_DIR/rabbitmq"
    [ "$(id -u)" -eq 0 ] && chown rabbitmq "$SERVICES_DIR/rabbitmq"
    if (exec 3<>"/dev/tcp/127.0.0.1/$RABBITMQ_PORT") 2>/dev/null; then
        return
    fi
    rabbitmq_as /usr/lib/rabbitmq/bin/rabbitmq-server -detached
    for _ in $(seq 120); do
        (exec 3<>"/dev/tcp/127.0.0.1/$RABBITMQ_PORT") 2>/dev/null && return
        sleep 0.5
    done
    echo "RabbitMQ did not start; see $SERVICES_DIR/rabbitmq/log" >&2
    exit 1
}

case "${1:-start}" in
    start)
        apt_install
        start_redis
        start_postgresql
        start_rabbitmq
        echo "Redis on 127.0.0.1:$REDIS_PORT, PostgreSQL on 127.0.0.1:$PGPORT," \
            "RabbitMQ on 127.0.0.1:$RABBITMQ_PORT"
        ;;
    stop)
        redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
        rabbitmq_as /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBITMQ_NODE" stop >/dev/null 2>&1 || true
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
