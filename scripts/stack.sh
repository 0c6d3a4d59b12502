#!/usr/bin/env bash
# Local test stack for etl-assets: MariaDB (MySQL source), PostgreSQL (Redshift
# stand-in) and a moto server (S3/KMS/SNS/SQS), all on 127.0.0.1.
#
# Usage: scripts/stack.sh start|stop|status|env
#   start   reuse whatever already answers on a port, start the rest (idempotent);
#           progress goes to stderr, the export lines to stdout, so
#           `eval "$(scripts/stack.sh start)"` works.
#   stop    stop only what this script started (never a reused server);
#           `stop --purge` also deletes our data dirs for the selected ports.
#   status  per service: answering or not, ours or reused (exit 1 if any is down).
#   env     print the export lines (also written to $STACK_DIR/env.sh).
#
# Env overrides: STACK_DIR (<repo>/.stack), MYSQL_PORT (3306), PG_PORT (5432),
# MOTO_PORT (5000), PYTHON (<repo>/.venv/bin/python), PG_BINDIR (newest
# /usr/lib/postgresql/*/bin). Instances are kept per port
# ($STACK_DIR/<service>-<port>), so several port sets can coexist.
# Debian 12, run as root (apt, runuser to the mysql/postgres users).
set -euo pipefail

REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${STACK_DIR:-$REPO_DIR/.stack}
MYSQL_PORT=${MYSQL_PORT:-3306}
PG_PORT=${PG_PORT:-5432}
MOTO_PORT=${MOTO_PORT:-5000}
PYTHON=${PYTHON:-$REPO_DIR/.venv/bin/python}

# Fixed, test-only credentials (the tests expect exactly these).
DB_USER=etl
DB_PASS=etl-test-pass
PG_DB=etl_test

STOP_TIMEOUT=30   # seconds between TERM and KILL
WAIT_TIMEOUT=60   # seconds to wait for a freshly started server

MY_DIR=$STACK_DIR/mariadb-$MYSQL_PORT
PG_DIR=$STACK_DIR/postgres-$PG_PORT
MOTO_DIR=$STACK_DIR/moto-$MOTO_PORT

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

for p in "$MYSQL_PORT" "$PG_PORT" "$MOTO_PORT"; do
  if ! [[ $p =~ ^[0-9]{1,5}$ ]] || ((10#$p == 0 || 10#$p > 65535)); then die "invalid port: $p"; fi
done

# ---------------------------------------------------------------- helpers ---

need_root() { [[ $EUID -eq 0 ]] || die "'$1' must run as root (apt, runuser)"; }

# Bare TCP probe, for when the protocol-specific client is not installed yet.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# True if PID is alive and its command line contains every given fragment;
# guards against killing an unrelated process that recycled a stale PID.
pid_matches() {
  local pid=$1 cmd frag; shift
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  for frag in "$@"; do [[ $cmd == *"$frag"* ]] || return 1; done
}

# PID from a pid file if the process still matches, else fail.
live_pid() {
  local file=$1 pid; shift
  [[ -f $file ]] || return 1
  pid=$(head -n1 "$file" 2>/dev/null | tr -d '[:space:]')
  pid_matches "$pid" "$@" && echo "$pid"
}

# TERM, wait, then KILL: only for a PID we verified as ours.
kill_pid() {
  local pid=$1 name=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "$name (pid $pid) ignored TERM for ${STOP_TIMEOUT}s, sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# Poll CMD until it succeeds; CHECK_PID (if set) aborts early when the server died.
wait_until() {
  local what=$1 logfile=$2 check_pid=$3 i; shift 3
  for ((i = 0; i < WAIT_TIMEOUT * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    if [[ -n $check_pid ]] && ! kill -0 "$check_pid" 2>/dev/null; then
      tail -n 20 "$logfile" >&2 2>/dev/null || true
      die "$what exited during startup (log: $logfile)"
    fi
    sleep 0.1
  done
  tail -n 20 "$logfile" >&2 2>/dev/null || true
  die "$what did not answer within ${WAIT_TIMEOUT}s (log: $logfile)"
}

# The mysql/postgres service users must be able to reach their data dirs.
check_traversable() {
  local user=$1 dir=$2
  runuser -u "$user" -- test -x "$dir" ||
    die "user $user cannot enter $dir (a parent dir is not world-executable); set STACK_DIR elsewhere, e.g. /var/tmp/etl-stack"
}

# Unix socket paths are limited to 107 bytes.
check_socket_path() {
  ((${#1} <= 100)) || die "socket path too long (${#1} chars): $1; set a shorter STACK_DIR"
}

# ------------------------------------------------------------------- apt ---

APT_UPDATED=0
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_OURS=0

cleanup() {
  # Remove the temporary "don't start services" policy only if we created it.
  if ((POLICY_RC_OURS)); then rm -f "$POLICY_RC"; fi
}
trap cleanup EXIT

# apt_install PKG...: install only missing packages; never auto-start services.
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == 'install ok installed' ]] || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if [[ ! -e $POLICY_RC ]]; then
    # Packages would otherwise start system-wide mariadb/postgresql instances.
    printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
    chmod 755 "$POLICY_RC"
    POLICY_RC_OURS=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ((!APT_UPDATED)); then
    log "apt-get update"
    apt-get update -qq >&2
    APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# --------------------------------------------------------------- MariaDB ---

MY_SOCK=$MY_DIR/mysqld.sock
MY_PIDFILE=$MY_DIR/mariadbd.pid
MY_LOG=$MY_DIR/error.log

my_ours_pid() { live_pid "$MY_PIDFILE" mariadbd "--datadir=$MY_DIR/data " "--port=$MYSQL_PORT "; }

# "Answers" = a MySQL-protocol server is there. ping exits 0 even on "Access
# denied", but not when the server refuses our host (1130: no user for
# 127.0.0.1) or blocks it (1129) or is full (1040), so accept those errors too.
my_answers() {
  command -v mariadb-admin >/dev/null || { port_open "$MYSQL_PORT"; return; }
  local out
  out=$(mariadb-admin --no-defaults --connect-timeout=2 -h127.0.0.1 -P"$MYSQL_PORT" ping 2>&1) && return 0
  grep -Eq 'Access denied|is not allowed to connect|is blocked because|Too many connections' <<<"$out"
}

# Admin SQL on a server we reuse: root with empty password over TCP (how this
# machine kind is set up), else Debian's root-via-unix_socket on the default
# socket, but only if that socket really belongs to the server on our port.
my_admin_reused() {
  if mariadb --no-defaults -uroot -h127.0.0.1 -P"$MYSQL_PORT" -e 'SELECT 1' >/dev/null 2>&1; then
    mariadb --no-defaults -uroot -h127.0.0.1 -P"$MYSQL_PORT" "$@"
    return
  fi
  local sock=/run/mysqld/mysqld.sock
  if [[ -S $sock ]] &&
    [[ $(mariadb --no-defaults -uroot --socket="$sock" -N -e 'SELECT @@port' 2>/dev/null) == "$MYSQL_PORT" ]]; then
    mariadb --no-defaults -uroot --socket="$sock" "$@"
    return
  fi
  return 99
}

my_admin_ours() { mariadb --no-defaults -uroot --socket="$MY_SOCK" "$@"; }

my_ensure_user() {
  local admin=$1 sql="" h
  for h in 127.0.0.1 localhost; do
    # ALTER too, in case the user pre-existed with another password.
    sql+="CREATE USER IF NOT EXISTS '$DB_USER'@'$h' IDENTIFIED BY '$DB_PASS';"
    sql+="ALTER USER '$DB_USER'@'$h' IDENTIFIED BY '$DB_PASS';"
    # Tests create and drop their own databases, hence *.* (test-only server).
    sql+="GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'$h' WITH GRANT OPTION;"
  done
  local rc=0 err
  err=$("$admin" -e "$sql" 2>&1 >/dev/null) || rc=$?
  ((rc == 0 || rc == 99)) || log "MariaDB: $err"
  return "$rc"
}

# Proves what the tests do: TCP login with the password, and full grants.
my_verify_user() {
  local grants
  grants=$(MYSQL_PWD=$DB_PASS mariadb --no-defaults -u"$DB_USER" -h127.0.0.1 -P"$MYSQL_PORT" \
    -N -e 'SHOW GRANTS' 2>/dev/null) || return 1
  grep -q 'GRANT ALL PRIVILEGES ON \*\.\* TO .*WITH GRANT OPTION' <<<"$grants"
}

my_start_private() {
  apt_install mariadb-server mariadb-client
  check_traversable mysql "$STACK_DIR"
  check_socket_path "$MY_SOCK"
  mkdir -p "$MY_DIR"
  # A marker, so a half-finished init gets redone instead of half-used.
  if [[ ! -f $MY_DIR/.initialized ]]; then
    log "MariaDB: initialising datadir $MY_DIR/data"
    rm -rf "$MY_DIR/data"
    mkdir -p "$MY_DIR/data"
    chown -R mysql:mysql "$MY_DIR"
    # root@localhost via unix_socket: OS root gets in on our socket, no password.
    mariadb-install-db --no-defaults --user=mysql --datadir="$MY_DIR/data" \
      --auth-root-authentication-method=socket --skip-test-db >"$MY_DIR/install-db.log" 2>&1 ||
      { tail -n 20 "$MY_DIR/install-db.log" >&2; die "mariadb-install-db failed"; }
    touch "$MY_DIR/.initialized"
  fi
  chown mysql:mysql "$MY_DIR" "$MY_DIR/data"
  log "MariaDB: starting private server on 127.0.0.1:$MYSQL_PORT"
  # --no-defaults keeps /etc/mysql config (and the system instance's socket,
  # pid file, datadir) out of our instance. flush_log_at_trx_commit=2: the data
  # is throw-away, durability is not worth the fsyncs.
  start-stop-daemon --start --quiet --background --make-pidfile --pidfile "$MY_PIDFILE" \
    --exec /usr/sbin/mariadbd -- \
    --no-defaults --user=mysql --datadir="$MY_DIR/data" --socket="$MY_SOCK" \
    --pid-file="$MY_DIR/data/mariadbd.pid" --port="$MYSQL_PORT" --bind-address=127.0.0.1 \
    --log-error="$MY_LOG" --skip-name-resolve \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
    --innodb-flush-log-at-trx-commit=2 9>&-
  local pid
  pid=$(cat "$MY_PIDFILE")
  wait_until "MariaDB" "$MY_LOG" "$pid" \
    mariadb-admin --no-defaults --socket="$MY_SOCK" -uroot ping
}

my_start() {
  local admin
  if my_ours_pid >/dev/null; then
    log "MariaDB: already running (ours) on 127.0.0.1:$MYSQL_PORT"
    admin=my_admin_ours
  elif port_open "$MYSQL_PORT"; then
    apt_install mariadb-client   # needed to talk to the reused server
    my_answers || die "127.0.0.1:$MYSQL_PORT is busy but is not a MySQL/MariaDB server; set MYSQL_PORT"
    log "MariaDB: reusing the server already on 127.0.0.1:$MYSQL_PORT"
    admin=my_admin_reused
  else
    my_start_private
    admin=my_admin_ours
  fi
  local rc=0
  my_ensure_user "$admin" || rc=$?
  if ((rc != 0)); then
    if my_verify_user; then
      log "MariaDB: WARNING: no root access to 127.0.0.1:$MYSQL_PORT (rc=$rc), but user $DB_USER already works; left as is"
    elif ((rc == 99)); then
      die "MariaDB on 127.0.0.1:$MYSQL_PORT is not ours and root without password is refused (TCP and /run/mysqld/mysqld.sock).
  Create the user yourself, e.g. as an admin:
    CREATE USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS'; GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1' WITH GRANT OPTION;
    (same for '$DB_USER'@'localhost')
  or free the port, or pick another MYSQL_PORT to get a private server."
    else
      die "MariaDB: creating user $DB_USER failed on 127.0.0.1:$MYSQL_PORT"
    fi
  fi
  my_verify_user || die "MariaDB: TCP login as $DB_USER@127.0.0.1:$MYSQL_PORT failed or lacks ALL PRIVILEGES ON *.*"
  log "MariaDB: $DB_USER login over TCP ok"
}

my_stop() {
  local pid
  if pid=$(my_ours_pid); then
    log "MariaDB: stopping ours (pid $pid, port $MYSQL_PORT)"
    kill_pid "$pid" MariaDB
  elif [[ -f $MY_PIDFILE ]]; then
    log "MariaDB: pid file is stale, not ours any more; nothing to stop"
  else
    log "MariaDB: nothing of ours on port $MYSQL_PORT"
  fi
  rm -f "$MY_PIDFILE"
}

# ------------------------------------------------------------ PostgreSQL ---

PG_SOCKDIR=$PG_DIR/run
PG_LOG=$PG_DIR/postgres.log

# Newest installed PostgreSQL that has BIN (Debian keeps server binaries off PATH).
pg_bin() {
  local name=$1 d
  if [[ -n ${PG_BINDIR:-} && -x $PG_BINDIR/$name ]]; then echo "$PG_BINDIR/$name"; return; fi
  for d in $(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV); do
    [[ -x $d/$name ]] && { echo "$d/$name"; return; }
  done
  command -v "$name" 2>/dev/null || return 1
}

psql_() { "$(pg_bin psql)" -X -q -w -v ON_ERROR_STOP=1 "$@"; }

# Ours = the postmaster.pid of our datadir names a live postgres on our datadir.
pg_ours_pid() {
  [[ -f $PG_DIR/data/postmaster.pid ]] || return 1
  live_pid "$PG_DIR/data/postmaster.pid" postgres "$PG_DIR/data "
}

pg_answers() {
  local isready
  if isready=$(pg_bin pg_isready); then
    "$isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2
  else
    port_open "$PG_PORT"
  fi
}

# Reused server: postgres over TCP without password (trust here), else peer
# auth as OS user postgres on Debian's default socket dir.
pg_admin_reused() {
  if psql_ -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
    psql_ -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
    return
  fi
  if [[ -S /var/run/postgresql/.s.PGSQL.$PG_PORT ]] &&
    (cd / && runuser -u postgres -- "$(pg_bin psql)" -X -q -w -p "$PG_PORT" -d postgres -c 'SELECT 1') >/dev/null 2>&1; then
    (cd / && runuser -u postgres -- "$(pg_bin psql)" -X -q -w -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@")
    return
  fi
  return 99
}

# Private cluster: trust on our own socket dir.
pg_admin_ours() { psql_ -h "$PG_SOCKDIR" -p "$PG_PORT" -U postgres -d postgres "$@"; }

pg_ensure_role() {
  local admin=$1 rc=0 err sql
  # SUPERUSER + CREATEDB: tests create schemas and databases of their own.
  sql=$(cat <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN CREATEDB SUPERUSER PASSWORD '$DB_PASS';
  ELSE
    ALTER ROLE $DB_USER LOGIN CREATEDB SUPERUSER PASSWORD '$DB_PASS';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $DB_USER'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')\\gexec
ALTER DATABASE $PG_DB OWNER TO $DB_USER;
SQL
)
  err=$("$admin" 2>&1 >/dev/null <<<"$sql") || rc=$?
  ((rc == 0 || rc == 99)) || log "PostgreSQL: $err"
  return "$rc"
}

# What the tests do: password login over TCP into etl_test, with the right attributes.
pg_verify_role() {
  local out
  out=$(PGPASSWORD=$DB_PASS PGCONNECT_TIMEOUT=5 psql_ -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d "$PG_DB" -At -c \
    "SELECT rolsuper AND rolcreatedb AND rolcanlogin
            AND pg_catalog.pg_get_userbyid((SELECT datdba FROM pg_database WHERE datname = current_database())) = current_user
       FROM pg_roles WHERE rolname = current_user" 2>/dev/null) || return 1
  [[ $out == t ]]
}

pg_start_private() {
  apt_install postgresql
  local initdb pg_ctl
  initdb=$(pg_bin initdb) || die "initdb not found (PG_BINDIR?)"
  pg_ctl=$(pg_bin pg_ctl) || die "pg_ctl not found (PG_BINDIR?)"
  check_traversable postgres "$STACK_DIR"
  check_socket_path "$PG_SOCKDIR/.s.PGSQL.$PG_PORT"
  mkdir -p "$PG_DIR"
  chown postgres:postgres "$PG_DIR"
  if [[ ! -f $PG_DIR/.initialized ]]; then
    log "PostgreSQL: initdb $PG_DIR/data"
    rm -rf "$PG_DIR/data"
    # trust only on our private socket (admin); password (scram) on TCP like the tests.
    (cd / && runuser -u postgres -- "$initdb" -D "$PG_DIR/data" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256) >"$PG_DIR/initdb.log" 2>&1 ||
      { tail -n 20 "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
    touch "$PG_DIR/.initialized"
  fi
  install -d -o postgres -g postgres -m 700 "$PG_SOCKDIR"
  log "PostgreSQL: starting private cluster on 127.0.0.1:$PG_PORT"
  # fsync & co off: throw-away test data, speed matters more than durability.
  (cd / && runuser -u postgres -- "$pg_ctl" -D "$PG_DIR/data" -l "$PG_LOG" -w -t "$WAIT_TIMEOUT" \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k '$PG_SOCKDIR' -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start) >/dev/null 9>&- ||
    { tail -n 20 "$PG_LOG" >&2 2>/dev/null || true; die "PostgreSQL did not start (log: $PG_LOG)"; }
  wait_until "PostgreSQL" "$PG_LOG" "" pg_answers
}

pg_start() {
  local admin
  if pg_ours_pid >/dev/null; then
    log "PostgreSQL: already running (ours) on 127.0.0.1:$PG_PORT"
    admin=pg_admin_ours
  elif port_open "$PG_PORT"; then
    pg_bin psql >/dev/null || apt_install postgresql-client
    pg_answers || die "127.0.0.1:$PG_PORT is busy but is not a PostgreSQL server; set PG_PORT"
    log "PostgreSQL: reusing the server already on 127.0.0.1:$PG_PORT"
    admin=pg_admin_reused
  else
    pg_start_private
    admin=pg_admin_ours
  fi
  local rc=0
  pg_ensure_role "$admin" || rc=$?
  if ((rc != 0)); then
    if pg_verify_role; then
      log "PostgreSQL: WARNING: no superuser access to 127.0.0.1:$PG_PORT (rc=$rc), but role $DB_USER already works; left as is"
    elif ((rc == 99)); then
      die "PostgreSQL on 127.0.0.1:$PG_PORT is not ours and neither 'psql -h 127.0.0.1 -U postgres' (no password) nor peer auth as OS user postgres works.
  Create the role yourself, e.g. as a superuser:
    CREATE ROLE $DB_USER LOGIN CREATEDB SUPERUSER PASSWORD '$DB_PASS'; CREATE DATABASE $PG_DB OWNER $DB_USER;
  or free the port, or pick another PG_PORT to get a private cluster."
    else
      die "PostgreSQL: creating role $DB_USER / database $PG_DB failed on 127.0.0.1:$PG_PORT"
    fi
  fi
  pg_verify_role ||
    die "PostgreSQL: password login as $DB_USER to $PG_DB on 127.0.0.1:$PG_PORT failed (check pg_hba.conf for 127.0.0.1)"
  log "PostgreSQL: $DB_USER login over TCP ok"
}

pg_stop() {
  local pg_ctl
  if pg_ours_pid >/dev/null; then
    pg_ctl=$(pg_bin pg_ctl) || die "pg_ctl not found"
    log "PostgreSQL: stopping our cluster (port $PG_PORT)"
    (cd / && runuser -u postgres -- "$pg_ctl" -D "$PG_DIR/data" -m fast -w -t "$STOP_TIMEOUT" stop) >/dev/null
  else
    log "PostgreSQL: nothing of ours on port $PG_PORT"
  fi
}

# ------------------------------------------------------------------ moto ---

MOTO_PIDFILE=$MOTO_DIR/moto.pid
MOTO_LOG=$MOTO_DIR/moto.log
MOTO_URL=http://127.0.0.1:$MOTO_PORT

# Trailing spaces in the fragments: "-p 5000 " must not match "-p 50001".
moto_ours_pid() { live_pid "$MOTO_PIDFILE" moto.server "-p $MOTO_PORT "; }
moto_answers() { curl -sf -m 2 -o /dev/null "$MOTO_URL/moto-api/"; }

moto_start() {
  command -v curl >/dev/null || apt_install curl ca-certificates
  if moto_answers; then
    if moto_ours_pid >/dev/null; then
      log "moto: already running (ours) on $MOTO_URL"
    else
      log "moto: reusing the server already on $MOTO_URL"
    fi
    return
  fi
  port_open "$MOTO_PORT" && die "127.0.0.1:$MOTO_PORT is busy but is not a moto server; set MOTO_PORT"
  [[ -x $PYTHON ]] || die "PYTHON=$PYTHON not found (create the venv, or set PYTHON)"
  "$PYTHON" -c 'import moto.server, flask' 2>/dev/null ||
    die "$PYTHON cannot import moto.server; install it: $PYTHON -m pip install 'moto[server]'"
  mkdir -p "$MOTO_DIR"
  log "moto: starting on $MOTO_URL"
  # setsid: own session, so it survives the calling shell/CI step and does not
  # get its Ctrl-C. setsid execs in place (we are not a group leader), so $! is
  # moto's pid; checked below via its cmdline anyway.
  setsid "$PYTHON" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >>"$MOTO_LOG" 2>&1 </dev/null 9>&- &
  local pid=$!
  echo "$pid" >"$MOTO_PIDFILE"
  wait_until "moto" "$MOTO_LOG" "$pid" moto_answers
  moto_ours_pid >/dev/null || die "moto answers but pid $pid does not look like it; check $MOTO_LOG"
}

moto_stop() {
  local pid
  if pid=$(moto_ours_pid); then
    log "moto: stopping ours (pid $pid, port $MOTO_PORT)"
    kill_pid "$pid" moto
  else
    log "moto: nothing of ours on port $MOTO_PORT"
  fi
  rm -f "$MOTO_PIDFILE"
}

# ------------------------------------------------------------- commands ---

print_env() {
  local lines
  lines=$(cat <<EOF
export ETL_TEST_MYSQL_URL='mysql+pymysql://$DB_USER:$DB_PASS@127.0.0.1:$MYSQL_PORT/'
export ETL_TEST_PG_URL='postgresql+psycopg://$DB_USER:$DB_PASS@127.0.0.1:$PG_PORT/$PG_DB'
export ETL_TEST_S3_ENDPOINT='$MOTO_URL'
EOF
)
  printf '%s\n' "$lines"
  # Best effort: `env` also works for a user who cannot write STACK_DIR.
  { mkdir -p "$STACK_DIR" && printf '%s\n' "$lines" >"$STACK_DIR/env.sh"; } 2>/dev/null ||
    log "warning: could not write $STACK_DIR/env.sh"
}

# Serialise start/stop (e.g. parallel CI steps) on one lock per STACK_DIR.
# Daemons are spawned with 9>&- so they do not inherit (and hold) the lock.
take_lock() {
  mkdir -p "$STACK_DIR"
  exec 9>"$STACK_DIR/.lock"
  flock -w 300 9 || die "another stack.sh holds $STACK_DIR/.lock"
}

cmd_start() {
  need_root start
  take_lock
  my_start
  pg_start
  moto_start
  log "up: MariaDB mysql://127.0.0.1:$MYSQL_PORT  PostgreSQL postgresql://127.0.0.1:$PG_PORT/$PG_DB  moto $MOTO_URL"
  print_env
}

cmd_stop() {
  need_root stop
  take_lock
  moto_stop
  pg_stop
  my_stop
  if [[ ${1:-} == --purge ]]; then
    # Only our own per-port dirs, and only once nothing of ours runs there.
    local d
    for d in "$MOTO_DIR" "$PG_DIR" "$MY_DIR"; do
      [[ -d $d ]] && { log "purging $d"; rm -rf -- "$d"; }
    done
  fi
}

cmd_status() {
  local down=0 owner
  if my_answers; then
    if my_ours_pid >/dev/null; then owner="ours, datadir $MY_DIR/data"; else owner=reused; fi
    echo "mariadb     127.0.0.1:$MYSQL_PORT  up ($owner)"
  else
    echo "mariadb     127.0.0.1:$MYSQL_PORT  down"; down=1
  fi
  if pg_answers; then
    if pg_ours_pid >/dev/null; then owner="ours, datadir $PG_DIR/data"; else owner=reused; fi
    echo "postgresql  127.0.0.1:$PG_PORT  up ($owner)"
  else
    echo "postgresql  127.0.0.1:$PG_PORT  down"; down=1
  fi
  if moto_answers; then
    if moto_ours_pid >/dev/null; then owner="ours, log $MOTO_LOG"; else owner=reused; fi
    echo "moto        127.0.0.1:$MOTO_PORT  up ($owner)"
  else
    echo "moto        127.0.0.1:$MOTO_PORT  down"; down=1
  fi
  return "$down"
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop "${2:-}" ;;
  status) cmd_status ;;
  env) print_env ;;
  *)
    echo "usage: $0 start|stop [--purge]|status|env" >&2
    exit 2
    ;;
esac
