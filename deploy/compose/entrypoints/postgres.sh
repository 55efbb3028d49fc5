#!/bin/bash
# Entrypoint of localhost/invoicing-postgres (deploy/container/Containerfile.postgres).
#
# Starts as root only to prepare the data volume: on first start, initdb as
# the `postgres` account (superuser POSTGRES_ADMIN, password from
# POSTGRES_PASSWORD_FILE, scram-sha-256 for every connection); then the
# server runs as `postgres`, never as root.
set -euo pipefail

BIN=/usr/lib/postgresql/15/bin
PGDATA=${PGDATA:-/var/lib/postgresql/data}
ADMIN=${POSTGRES_ADMIN:-invoicing}
PORT=${PGPORT:-5432}
LISTEN=${POSTGRES_LISTEN:-127.0.0.1}

say() { echo "[postgres-entrypoint] $*" >&2; }
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

if [[ $(id -u) -ne 0 ]]; then
    say "must start as root (it drops to the postgres account itself)"
    exit 1
fi
install -d -o postgres -g postgres -m 0700 "$PGDATA"
install -d -o postgres -g postgres -m 0775 /run/postgresql
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    password_file=${POSTGRES_PASSWORD_FILE:?POSTGRES_PASSWORD_FILE names the superuser password file}
    say "initdb into $PGDATA (superuser $ADMIN, scram-sha-256)"
    # A short-lived copy only the server's account reads.
    copy=$(mktemp /run/postgresql/initdb-XXXXXX)
    trap 'rm -f "$copy"' EXIT
    cat "$password_file" > "$copy"
    chown postgres:postgres "$copy"
    as_postgres "$BIN/initdb" -D "$PGDATA" -U "$ADMIN" --pwfile="$copy" \
        --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 --no-locale --no-sync > /dev/null
    rm -f "$copy"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    "$BIN/postgres" -D "$PGDATA" -p "$PORT" -h "$LISTEN" -k /run/postgresql \
    -c password_encryption=scram-sha-256 -c max_connections=200 -c shared_buffers=256MB "$@"
