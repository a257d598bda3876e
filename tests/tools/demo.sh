#!/usr/bin/env bash
# Installs what is needed, builds, starts a local PostgreSQL under the project
# folder (.demo/), applies the migrations and runs the daemon in the foreground
# with a demo configuration. Ctrl-C stops the daemon and the demo cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
top=$(pwd)

tests/tools/install-deps.sh --update
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
bin=$top/build/release/daemon/idv-callbackd

demo=$top/.demo
pgbin=/usr/lib/postgresql/15/bin
mkdir -p "$demo"
run_pg=()
if [ "$(id -u)" -eq 0 ]; then
  # PostgreSQL refuses to run as root: the cluster belongs to the postgres user.
  run_pg=(runuser -u postgres --)
  if ! runuser -u postgres -- test -x "$demo"; then
    echo "demo: the postgres user cannot reach $demo (a parent directory is private);" >&2
    echo "      clone the project somewhere world-traversable, e.g. /srv or /opt." >&2
    exit 1
  fi
  chown postgres: "$demo"
fi
port=${IDV_DEMO_PG_PORT:-55432}
if [ ! -f "$demo/pg/PG_VERSION" ]; then
  "${run_pg[@]}" "$pgbin/initdb" -D "$demo/pg" -A trust -U postgres -E UTF8 >/dev/null
  cat >>"$demo/pg/postgresql.auto.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$demo'
port = $port
synchronous_commit = on
CONF
fi
"${run_pg[@]}" "$pgbin/pg_ctl" -D "$demo/pg" -l "$demo/postgres.log" -w status >/dev/null 2>&1 ||
  "${run_pg[@]}" "$pgbin/pg_ctl" -D "$demo/pg" -l "$demo/postgres.log" -w start >/dev/null
stop_pg() { "${run_pg[@]}" "$pgbin/pg_ctl" -D "$demo/pg" -m fast -w stop >/dev/null 2>&1 || true; }
trap stop_pg EXIT

IDV_DATABASE_URL="host=$demo port=$port user=postgres dbname=postgres" "$bin" migrate
psql -X -q -h "$demo" -p "$port" -U postgres -d postgres -c \
  "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'idv_demo') THEN
     CREATE ROLE idv_demo LOGIN IN ROLE idv_daemon; END IF; END \$\$"

if [ ! -s "$demo/admin.token" ]; then
  (umask 077; openssl rand -hex 24 >"$demo/admin.token")
fi
cat >"$demo/idv-callbackd.conf" <<CONF
# Demo configuration: plain HTTP on loopback, no Alibaba credentials (the
# callback is the final word, confirmed = false).
listen = 127.0.0.1:8080
admin_listen = 127.0.0.1:8081
database_url = host=$demo port=$port user=idv_demo dbname=postgres
admin_token_file = admin.token
log_format = text
log_level = info
CONF
token=$(cat "$demo/admin.token")
cat <<HELP

idv-callbackd demo: public listener http://127.0.0.1:8080, admin http://127.0.0.1:8081
PostgreSQL: psql -h $demo -p $port -U postgres

Register a transaction (as a business that called Initialize itself would):
  curl -s -H 'Authorization: Bearer $token' -H 'Content-Type: application/json' \\
       -d '{"transactionId":"demo1","merchantBizId":"biz1","callbackToken":"demo-token-0123456789"}' \\
       http://127.0.0.1:8081/v1/transactions/register

Send it Alibaba's callback:
  curl -s 'http://127.0.0.1:8080/idv/callback?transactionId=demo1&passed=Y&subCode=200&callbackToken=demo-token-0123456789'

See what PostgreSQL recorded:
  curl -s -H 'Authorization: Bearer $token' http://127.0.0.1:8081/v1/transactions/demo1
  psql -h $demo -p $port -U postgres -c 'SELECT * FROM idv.transaction_status'

Ctrl-C stops the daemon and the demo cluster.

HELP
# Not exec: the trap must stop the cluster when the daemon exits.
"$bin" serve --config "$demo/idv-callbackd.conf" || true
