#!/usr/bin/env bash
# Create (or update) a virtual environment with this project installed.
# usage: scripts/bootstrap.sh VENV_DIR PYTHON EXTRAS [MORE_REQUIREMENTS...]
#   e.g. scripts/bootstrap.sh .venv python3 test "Django>=6,<7"
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$1
python=$2
extras=$3
shift 3

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "Python 3.10 or newer is needed ($python is $("$python" --version 2>&1))." >&2
    exit 1
fi
version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
if [ -x "$venv/bin/python" ] && [ "$(version "$venv/bin/python")" != "$(version "$python")" ]; then
    rm -rf "$venv"  # made with another Python
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# Reinstall only when the project's metadata or the requested extras changed.
stamp="$venv/.installed"
wanted="$(cat pyproject.toml) [$extras] $*"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e ".[$extras]" "$@" || {
        echo "pip could not install the project. Building mysqlclient (the MySQL driver) needs" \
            "a C compiler, pkg-config, libmariadb-dev and the Python headers;" \
            "scripts/services.sh installs them on Debian." >&2
        exit 1
    }
    printf '%s' "$wanted" > "$stamp"
fi
