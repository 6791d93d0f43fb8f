#!/usr/bin/env bash
# Compares pgpilot with direct PostgreSQL, PgBouncer and pgpool-II on this machine.
#
#   loadtest/compare.sh [--quick] [--tls-only] [--out DIR]
#
# Starts a primary and two streaming replicas (`pgpilot demo`), PgBouncer in transaction mode
# in front of the primary, pgpool-II with load balancing over the replicas, and pgpilot with
# 2 workers, with 1, and with 2 in front of the primary alone; loads the pgbench tables; then runs every workload through
# `pgpilot-loadtest`, the targets interleaved round after round. Prints one table per workload
# and a summary (Markdown) with TPS ratios to direct PostgreSQL and to PgBouncer, p99 latency
# and CPU seconds per 1,000 transactions of each proxy process; then select with 1,000 and
# 5,000 clients, and with pools of 100, PgBouncer against pgpilot; then TLS on both sides (the
# servers switched to ssl = on, PgBouncer with client_tls_sslmode and server_tls_sslmode =
# require, pgpilot with tls.client_mode and tls.backend_mode = require, every client on TLS):
# select, select beside TLS logins churning, and idle. --tls-only runs just that part.
# Everything it starts is stopped on exit. Not part of CI: it needs the pgbouncer and pgpool2
# Debian packages (installed when missing) and takes about 30 minutes (--quick: under 4).
set -euo pipefail

QUICK=0
TLS_ONLY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --tls-only) TLS_ONLY=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: $0 [--quick] [--tls-only] [--out DIR]" >&2; exit 64 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$QUICK" = 1 ]; then
  DURATION=1.5; WARMUP=0.5; ROUNDS=1; IDLE_CLIENTS=1000; MANY="1000"
else
  DURATION=10; WARMUP=2; ROUNDS=3; IDLE_CLIENTS=10000; MANY="1000 5000"
fi
CLIENTS=32

need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! need pgbouncer || ! need pgpool || ! need pgbench; then
  echo "installing pgbouncer, pgpool2 and postgresql (pgbench)..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer pgpool2 postgresql >/dev/null
fi
PATH="$PATH:/usr/sbin"

echo "building release binaries..." >&2
(cd "$ROOT" && cargo build --release -q -p pgpilot -p pgpilot-loadtest)
PGPILOT="$ROOT/target/release/pgpilot"
LOADTEST="$ROOT/target/release/pgpilot-loadtest"

WORK="$(mktemp -d /tmp/pgpilot-compare.XXXXXX)"
chmod 755 "$WORK"
OUT="${OUT:-$WORK/results}"
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for b in pgbouncer pgbouncer100 pgbouncer-tls; do
    [ -f "$WORK/$b/pgbouncer.pid" ] && kill "$(cat "$WORK/$b/pgbouncer.pid")" 2>/dev/null || true
  done
  [ -f "$WORK/pgpool/pgpool.pid" ] && kill -INT "$(tr -d '\0' <"$WORK/pgpool/pgpool.pid")" 2>/dev/null || true
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# 1. The servers and pgpilot (2 workers), from the demo.
PILOT_PORT=$(free_port)
# Every proxy runs in a session of its own, as PgBouncer (-d) and PostgreSQL (pg_ctl) do: with
# the kernel's autogroup scheduling (kernel.sched_autogroup_enabled = 1, Debian's default), a
# proxy left in the load generator's session shares one CPU share with it, and PostgreSQL's
# backends then wait for a CPU for hundreds of milliseconds at a time.
# pgpilot runs with the allocator setting its systemd unit ships (freed pages go back at once).
export MIMALLOC_PURGE_DELAY=0
setsid "$PGPILOT" demo --dir "$WORK/demo" --port "$PILOT_PORT" >"$WORK/demo.log" 2>&1 &
PIDS+=($!)
PILOT_PID=$!
for _ in $(seq 1 300); do grep -q '^config:' "$WORK/demo.log" && break; sleep 0.2; done
read -r PRIMARY R1 R2 <<<"$(grep -oP 'primary on 127.0.0.1:\K[0-9]+|and :\K[0-9]+|replicas on 127.0.0.1:\K[0-9]+' "$WORK/demo.log" | tr '\n' ' ')"
[ -n "${R2:-}" ] || { cat "$WORK/demo.log" >&2; exit 1; }
echo "primary :$PRIMARY, replicas :$R1 :$R2, pgpilot :$PILOT_PORT" >&2

# Another pgpilot on the demo's cluster: its name, its port, then a sed expression for its
# config. Sets STARTED_PID.
another_pgpilot() {
  sed -e "s/^listen = .*/listen = \"127.0.0.1:$2\"/" -e "$3" "$WORK/demo/pgpilot.toml" >"$WORK/$1.toml"
  setsid "$PGPILOT" --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  STARTED_PID=$!
}

# 2. pgpilot with one worker, same cluster.
PILOT1_PORT=$(free_port)
another_pgpilot pgpilot-1 "$PILOT1_PORT" 's/^\[server\]$/[server]\nworkers = 1/'
PILOT1_PID=$STARTED_PID

# 2b. pgpilot (2 workers) with the primary alone: the same work as PgBouncer's, so that the
# proxy's own cost is compared, not the cost of serving reads from two more servers on the
# same two cores.
PILOTP_PORT=$(free_port)
python3 - "$WORK/demo/pgpilot.toml" "$PILOTP_PORT" >"$WORK/pgpilot-primary.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r'(?m)^listen = .*$', f'listen = "127.0.0.1:{sys.argv[2]}"', text)
head, *backends = text.split("[[backends]]")
kept = [b.replace("weight = 0", "weight = 1") for b in backends if 'role = "primary"' in b]
print("[[backends]]".join([head] + kept))
PY
setsid "$PGPILOT" --config "$WORK/pgpilot-primary.toml" >"$WORK/pgpilot-primary.log" 2>&1 &
PIDS+=($!)
PILOTP_PID=$!

# 3. PgBouncer, transaction mode, SCRAM to clients, in front of the primary.
mkdir -p "$WORK/pgbouncer"
cat >"$WORK/pgbouncer/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$PRIMARY dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $(free_port)
auth_type = scram-sha-256
auth_file = $WORK/pgbouncer/userlist.txt
pool_mode = transaction
max_client_conn = 12000
default_pool_size = 20
logfile = $WORK/pgbouncer/pgbouncer.log
pidfile = $WORK/pgbouncer/pgbouncer.pid
EOF
echo '"app" "app"' >"$WORK/pgbouncer/userlist.txt"
chown -R postgres "$WORK/pgbouncer"
su postgres -s /bin/sh -c "ulimit -n 20000 2>/dev/null; pgbouncer -d $WORK/pgbouncer/pgbouncer.ini"
PGB_PORT=$(grep -oP 'listen_port = \K[0-9]+' "$WORK/pgbouncer/pgbouncer.ini")

# 4. pgpool-II, streaming replication mode, reads balanced over the replicas.
mkdir -p "$WORK/pgpool"
POOL_PORT=$(free_port)
cat >"$WORK/pgpool/pgpool.conf" <<EOF
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $POOL_PORT
unix_socket_directories = '$WORK/pgpool'
pcp_listen_addresses = ''
pcp_port = $(free_port)
pcp_socket_dir = '$WORK/pgpool'
wd_ipc_socket_dir = '$WORK/pgpool'
pid_file_name = '$WORK/pgpool/pgpool.pid'
logdir = '$WORK/pgpool'
backend_hostname0 = '127.0.0.1'
backend_port0 = $PRIMARY
backend_weight0 = 0
backend_flag0 = 'ALWAYS_PRIMARY'
backend_hostname1 = '127.0.0.1'
backend_port1 = $R1
backend_weight1 = 1
backend_hostname2 = '127.0.0.1'
backend_port2 = $R2
backend_weight2 = 1
load_balance_mode = on
num_init_children = $CLIENTS
max_pool = 1
enable_pool_hba = on
pool_passwd = 'pool_passwd'
sr_check_period = 0
health_check_period = 0
failover_on_backend_error = off
use_watchdog = off
log_min_messages = warning
EOF
printf 'host all all 127.0.0.1/32 scram-sha-256\n' >"$WORK/pgpool/pool_hba.conf"
echo 'app:TEXTapp' >"$WORK/pgpool/pool_passwd"
: >"$WORK/pgpool/pcp.conf"
chown -R postgres "$WORK/pgpool"
setsid su postgres -s /bin/sh -c "pgpool -n -f $WORK/pgpool/pgpool.conf -F $WORK/pgpool/pcp.conf -a $WORK/pgpool/pool_hba.conf" \
  >"$WORK/pgpool/pgpool.out" 2>&1 &
PIDS+=($!)

wait_port "$PILOT1_PORT"; wait_port "$PILOTP_PORT"; wait_port "$PGB_PORT"; wait_port "$POOL_PORT"
PGB_PID=$(cat "$WORK/pgbouncer/pgbouncer.pid")
POOL_PID=$(cat "$WORK/pgpool/pgpool.pid")

# 5. pgbench tables at scale 1, then let the replicas replay them.
"$LOADTEST" --target direct=127.0.0.1:$PRIMARY --init 1 --workload select --clients 1 \
  --duration 0.2 --warmup 0 --rounds 1 >/dev/null
sleep 2

versions() {
  echo "machine: $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "postgresql: $(psql --version | awk '{print $3}'), pgbouncer: $(pgbouncer --version | head -1 | awk '{print $2}'), pgpool-II: $(pgpool --version 2>&1 | awk '{print $3}'), pgpilot: $(cd "$ROOT" && git rev-parse --short HEAD)"
  echo "settings: $CLIENTS clients, ${DURATION}s per run after ${WARMUP}s warm-up, $ROUNDS round(s), targets interleaved"
}
versions | tee "$OUT/versions.txt" >&2

COMMON=(--duration "$DURATION" --warmup "$WARMUP" --rounds "$ROUNDS" --threads 2
  --pid "pgbouncer=$PGB_PID" --pid "pgpool=$POOL_PID" --pid "pgpilot=$PILOT_PID" --pid "pgpilot-w1=$PILOT1_PID"
  --pid "pgpilot-primary=$PILOTP_PID")
ALL=(--target "direct=127.0.0.1:$PRIMARY" --target "pgbouncer=127.0.0.1:$PGB_PORT"
  --target "pgpool=127.0.0.1:$POOL_PORT" --target "pgpilot=127.0.0.1:$PILOT_PORT"
  --target "pgpilot-w1=127.0.0.1:$PILOT1_PORT" --target "pgpilot-primary=127.0.0.1:$PILOTP_PORT")

run() { # name, loadtest arguments...
  local name=$1; shift
  echo "== $name" >&2
  # Round lines and slow transactions (stderr) are kept beside the JSON.
  "$LOADTEST" "${COMMON[@]}" "$@" --json >"$OUT/$name.json" 2> >(tee "$OUT/$name.log" >&2)
}

# 7. TLS on both sides: a CA and a certificate for 127.0.0.1 / localhost (RSA 2048, as RDS's
# default CA issues), the servers switched to ssl = on (a reload suffices), PgBouncer and
# pgpilot each serving clients over TLS and reaching the servers over TLS (require: pooled
# connections' handshakes are rare, so verifying would cost both the same). Every target of the
# run, direct PostgreSQL included, is reached by the load generator over TLS, verified.
tls_runs() {
  local tls="$WORK/tls"
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pgpilot compare CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$tls/server.key" \
    -out "$tls/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tls/san.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 2 -extfile "$tls/san.ext" -out "$tls/server.crt" 2>/dev/null
  chown -R postgres "$tls"
  chmod 600 "$tls/server.key"
  for d in primary replica1 replica2; do
    printf "ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n" "$tls/server.crt" "$tls/server.key" \
      >>"$WORK/demo/$d/postgresql.conf"
    kill -HUP "$(head -1 "$WORK/demo/$d/postmaster.pid")"
  done
  mkdir -p "$WORK/pgbouncer-tls"
  sed -e "s|^listen_port = .*|listen_port = $(free_port)|" \
    -e "s|$WORK/pgbouncer/pgbouncer\.|$WORK/pgbouncer-tls/pgbouncer.|" \
    "$WORK/pgbouncer/pgbouncer.ini" >"$WORK/pgbouncer-tls/pgbouncer.ini"
  printf '%s\n' "client_tls_sslmode = require" "client_tls_cert_file = $tls/server.crt" \
    "client_tls_key_file = $tls/server.key" "server_tls_sslmode = require" \
    >>"$WORK/pgbouncer-tls/pgbouncer.ini"
  chown -R postgres "$WORK/pgbouncer-tls"
  su postgres -s /bin/sh -c "ulimit -n 20000 2>/dev/null; pgbouncer -d $WORK/pgbouncer-tls/pgbouncer.ini"
  local pgb_port pilot_port pilotp_port pgb_pid pilot_pid pilotp_pid section
  pgb_port=$(grep -oP 'listen_port = \K[0-9]+' "$WORK/pgbouncer-tls/pgbouncer.ini")
  section=$(printf '%s\n' "" "[tls]" 'client_mode = "require"' "cert_file = \"$tls/server.crt\"" \
    "key_file = \"$tls/server.key\"" 'backend_mode = "require"')
  pilot_port=$(free_port)
  pilotp_port=$(free_port)
  for name in pgpilot pgpilot-primary; do
    local port=$pilot_port
    [ "$name" = pgpilot-primary ] && port=$pilotp_port
    local from="$WORK/demo/pgpilot.toml"
    [ "$name" = pgpilot-primary ] && from="$WORK/pgpilot-primary.toml"
    { sed -e "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$from"; echo "$section"; } >"$WORK/$name-tls.toml"
    setsid "$PGPILOT" --config "$WORK/$name-tls.toml" >"$WORK/$name-tls.log" 2>&1 &
    PIDS+=($!)
    if [ "$name" = pgpilot ]; then pilot_pid=$!; else pilotp_pid=$!; fi
  done
  wait_port "$pgb_port"; wait_port "$pilot_port"; wait_port "$pilotp_port"
  pgb_pid=$(cat "$WORK/pgbouncer-tls/pgbouncer.pid")
  COMMON=(--duration "$DURATION" --warmup "$WARMUP" --rounds "$ROUNDS" --threads 2
    --tls-ca "$tls/ca.crt" --pid "pgbouncer=$pgb_pid" --pid "pgpilot=$pilot_pid"
    --pid "pgpilot-primary=$pilotp_pid")
  run select-tls --target "direct=127.0.0.1:$PRIMARY" --target "pgbouncer=127.0.0.1:$pgb_port" \
    --target "pgpilot=127.0.0.1:$pilot_port" --target "pgpilot-primary=127.0.0.1:$pilotp_port" \
    --workload select --clients "$CLIENTS"
  # TLS handshakes beside a select load, round by round: pgpilot's select over TLS alone, then
  # while 4 more clients open a new TLS connection (SCRAM login, one query) as fast as they can.
  mkdir -p "$OUT/handshakes"
  local r churn churn_s
  churn_s=$(awk "BEGIN { print $DURATION + $WARMUP + 1 }")
  local one=(--rounds 1 --threads 1 --tls-ca "$tls/ca.crt" --target "pgpilot=127.0.0.1:$pilot_port")
  echo "== handshakes" >&2
  for r in $(seq 1 "$ROUNDS"); do
    "$LOADTEST" "${one[@]}" --pid "pgpilot=$pilot_pid" --duration "$DURATION" --warmup "$WARMUP" \
      --workload select --clients "$CLIENTS" --json >"$OUT/handshakes/alone-$r.json" 2>>"$OUT/handshakes.log"
    "$LOADTEST" "${one[@]}" --duration "$churn_s" --warmup 0 --workload churn --clients 4 --json \
      >"$OUT/handshakes/churn-$r.json" 2>>"$OUT/handshakes.log" &
    churn=$!
    sleep 0.5
    "$LOADTEST" "${one[@]}" --pid "pgpilot=$pilot_pid" --duration "$DURATION" --warmup "$WARMUP" \
      --workload select --clients "$CLIENTS" --json >"$OUT/handshakes/beside-$r.json" 2>>"$OUT/handshakes.log"
    wait "$churn"
  done
  # Memory per idle TLS client: the session state each proxy keeps for it.
  run idle-tls --target "pgbouncer=127.0.0.1:$pgb_port" --target "pgpilot=127.0.0.1:$pilot_port" \
    --workload idle --clients "$IDLE_CLIENTS" --warmup $((IDLE_CLIENTS / 250 + 2)) --duration 2 --rounds 1
  kill "$pgb_pid" "$pilot_pid" "$pilotp_pid" 2>/dev/null || true
}
if [ "$TLS_ONLY" = 1 ]; then
  tls_runs
  python3 "$ROOT/loadtest/summary.py" "$OUT" | tee "$OUT/summary.md"
  echo "results in $OUT" >&2
  exit 0
fi

for w in select select-extended prepared tpcb; do
  run "$w" "${ALL[@]}" --workload "$w" --clients "$CLIENTS"
done
# Connection churn: connect with SCRAM, one query, disconnect (pgpool-II forks a child per
# client slot and is left out of churn and idle).
run churn --target "direct=127.0.0.1:$PRIMARY" --target "pgbouncer=127.0.0.1:$PGB_PORT" \
  --target "pgpilot=127.0.0.1:$PILOT_PORT" --workload churn --clients 8
# PgBouncer derives SCRAM keys on every login (a few ms each, one thread), hence the long
# warm-up; memory is divided by the connections open when it is sampled.
run idle --target "pgbouncer=127.0.0.1:$PGB_PORT" --target "pgpilot=127.0.0.1:$PILOT_PORT" \
  --workload idle --clients "$IDLE_CLIENTS" --warmup $((IDLE_CLIENTS / 250 + 2)) --duration 2 --rounds 1
# Open loop at half of direct's closed-loop maximum (select, simple protocol).
HALF=$(python3 -c "import json; r=json.load(open('$OUT/select.json'))['results']; print(int(r[0]['tps']/2))")
run open-loop --target "direct=127.0.0.1:$PRIMARY" --target "pgbouncer=127.0.0.1:$PGB_PORT" \
  --target "pgpilot=127.0.0.1:$PILOT_PORT" --workload select --clients "$CLIENTS" --rate "$HALF"
# And at a quarter, where no target is near its limit.
run open-loop-quarter --target "direct=127.0.0.1:$PRIMARY" --target "pgbouncer=127.0.0.1:$PGB_PORT" \
  --target "pgpilot=127.0.0.1:$PILOT_PORT" --workload select --clients "$CLIENTS" --rate "$((HALF / 2))"

# 6. Many clients on select, transaction pooling, PgBouncer against pgpilot: 1,000 and 5,000
# clients with the pools as they are (20 connections per backend), then 1,000 with pools of
# 100 (PgBouncer's default_pool_size, pgpilot's pool.size). PostgreSQL allows 300 connections,
# so pgpool-II and the one-worker pgpilot stop first to leave room for the pools of 100.
# Logins take the warm-up (PgBouncer derives SCRAM keys for each), one round each.
many() { # name, clients, pgbouncer port, pgpilot port
  run "$1" --target "pgbouncer=127.0.0.1:$3" --target "pgpilot=127.0.0.1:$4" --workload select \
    --clients "$2" --warmup $(($2 / 250 + 2)) --rounds 1
}
for n in $MANY; do
  many "select-$n" "$n" "$PGB_PORT" "$PILOT_PORT"
done
kill -INT "$POOL_PID" 2>/dev/null || true
kill "$PILOT1_PID" "$PILOTP_PID" 2>/dev/null || true
mkdir -p "$WORK/pgbouncer100"
sed -e "s|^listen_port = .*|listen_port = $(free_port)|" -e 's|^default_pool_size = .*|default_pool_size = 100|' \
  -e "s|$WORK/pgbouncer/pgbouncer\.|$WORK/pgbouncer100/pgbouncer.|" \
  "$WORK/pgbouncer/pgbouncer.ini" >"$WORK/pgbouncer100/pgbouncer.ini"
chown -R postgres "$WORK/pgbouncer100"
su postgres -s /bin/sh -c "ulimit -n 20000 2>/dev/null; pgbouncer -d $WORK/pgbouncer100/pgbouncer.ini"
PGB100_PORT=$(grep -oP 'listen_port = \K[0-9]+' "$WORK/pgbouncer100/pgbouncer.ini")
PILOT100_PORT=$(free_port)
another_pgpilot pgpilot-100 "$PILOT100_PORT" 's/^size = .*/size = 100/'
PILOT100_PID=$STARTED_PID
wait_port "$PGB100_PORT"; wait_port "$PILOT100_PORT"
PGB100_PID=$(cat "$WORK/pgbouncer100/pgbouncer.pid")
COMMON=(--duration "$DURATION" --warmup "$WARMUP" --rounds "$ROUNDS" --threads 2
  --pid "pgbouncer=$PGB100_PID" --pid "pgpilot=$PILOT100_PID")
many select-1000-pool100 1000 "$PGB100_PORT" "$PILOT100_PORT"
kill "$PGB100_PID" "$PILOT100_PID" 2>/dev/null || true

tls_runs

python3 "$ROOT/loadtest/summary.py" "$OUT" | tee "$OUT/summary.md"
echo "results in $OUT" >&2
