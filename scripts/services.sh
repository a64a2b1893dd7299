#!/usr/bin/env bash
# Install (from Debian packages, when missing) and start the servers the tests use:
# Redis on 127.0.0.1:$REDIS_PORT, PostgreSQL on 127.0.0.1:$PGPORT, MariaDB on
# 127.0.0.1:$MARIADB_PORT and RabbitMQ on 127.0.0.1:$RABBITMQ_PORT, each private to this
# project, with their data under $SERVICES_DIR. Also installs what pip needs to build the
# MySQL driver (mysqlclient). Safe to run again: running servers are kept.
set -euo pipefail

SERVICES_DIR=${SERVICES_DIR:-/tmp/django-celery-monitor-services}
REDIS_PORT=${REDIS_PORT:-6390}
PGPORT=${PGPORT:-5439}
MARIADB_PORT=${MARIADB_PORT:-3319}
RABBITMQ_PORT=${RABBITMQ_PORT:-5673}
RABBITMQ_NODE=cmtest@localhost

apt_install() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
    command -v chromium >/dev/null || missing+=(chromium)
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
    [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
    [ -d /usr/share/zoneinfo/Europe ] || missing+=(tzdata)
    # What pip needs to build mysqlclient, the driver of Django's MySQL backend.
    command -v cc >/dev/null || missing+=(gcc)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null ||
        missing+=(libmariadb-dev)
    if ! "${PYTHON:-python3}" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        2>/dev/null; then
        missing+=(python3-dev)
    fi
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

mariadb_client() {
    local tool=$1
    shift
    "$tool" --defaults-file="$SERVICES_DIR/mariadb/my.cnf" "$@"
}

start_mariadb() {
    local data="$SERVICES_DIR/mariadb" user=()
    mkdir -p "$data"
    chmod 755 "$SERVICES_DIR"
    if [ "$(id -u)" -eq 0 ]; then
        user=(--user=mysql)
        chown mysql "$data"
    fi
    # Only this file is read (never /etc/mysql), so a system MariaDB on 3306 is left alone.
    # Settings for tests: durability is traded for speed.
    cat >"$data/my.cnf" <<CNF
[client]
socket = $data/mariadb.sock
user = root

[mariadbd]
datadir = $data/db
socket = $data/mariadb.sock
pid-file = $data/mariadb.pid
log-error = $data/mariadb.log
port = $MARIADB_PORT
bind-address = 127.0.0.1
skip-name-resolve
skip-log-bin
innodb_flush_log_at_trx_commit = 2
innodb_doublewrite = 0
innodb_buffer_pool_size = 256M
character-set-server = utf8mb4
collation-server = utf8mb4_unicode_ci
CNF
    if ! mariadb_client mariadb-admin ping >/dev/null 2>&1; then
        run_mariadb "$data" "${user[@]}"
    fi
    # Django's MySQL backend converts to named time zones (USE_TZ), which needs the zone tables.
    if [ "$(mariadb_client mariadb -N -e 'SELECT COUNT(*) FROM mysql.time_zone_name')" = 0 ]; then
        mariadb-tzinfo-to-sql /usr/share/zoneinfo 2>/dev/null | mariadb_client mariadb mysql
    fi
}

run_mariadb() {
    local data=$1
    shift
    if [ ! -d "$data/db/mysql" ]; then
        # root connects without a password, over the socket and from 127.0.0.1.
        mariadb-install-db --defaults-file="$data/my.cnf" "$@" \
            --auth-root-authentication-method=normal --skip-test-db \
            >"$data/install.log" 2>&1 || {
            echo "MariaDB's data directory could not be created; see $data/install.log" >&2
            exit 1
        }
    fi
    setsid /usr/sbin/mariadbd --defaults-file="$data/my.cnf" "$@" \
        </dev/null >>"$data/mariadb.log" 2>&1 &
    local pid=$!
    for _ in $(seq 120); do
        if mariadb_client mariadb-admin ping >/dev/null 2>&1; then
            return
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    echo "MariaDB did not start; see $data/mariadb.log" >&2
    exit 1
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
        start_mariadb
        start_rabbitmq
        echo "Redis on 127.0.0.1:$REDIS_PORT, PostgreSQL on 127.0.0.1:$PGPORT," \
            "MariaDB on 127.0.0.1:$MARIADB_PORT, RabbitMQ on 127.0.0.1:$RABBITMQ_PORT"
        ;;
    stop)
        redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
        if [ -f "$SERVICES_DIR/mariadb/my.cnf" ]; then
            mariadb_client mariadb-admin shutdown >/dev/null 2>&1 || true
        fi
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
