#!/usr/bin/env bash
# Throwaway PostgreSQL and MariaDB servers for the outbox tests.
#
#   scripts/test-dbs.sh start <dir>   install the packages if missing, then init and start both
#                                     servers under <dir> on free 127.0.0.1 ports; prints
#                                       export FERRY_TEST_PG_URL=postgres://ferry:ferry@127.0.0.1:<port>/ferry_test
#                                       export FERRY_TEST_MYSQL_URL=mysql://ferry:ferry@127.0.0.1:<port>/ferry_test
#                                     on stdout (for eval); everything else goes to stderr.
#   scripts/test-dbs.sh stop <dir>    stop both servers; fine if they are already gone.
#
# Typical use:
#   dbdir=$(mktemp -d); trap 'scripts/test-dbs.sh stop "$dbdir"; rm -rf "$dbdir"' EXIT
#   eval "$(scripts/test-dbs.sh start "$dbdir")"
#
# Each <dir> gets its own pair of servers (own ports, own unix sockets inside <dir>), so two starts
# with two dirs never collide with each other nor with the distro's default cluster/service, which
# this script neither uses nor needs. `start` on a dir whose servers are running reprints their URLs.
# PostgreSQL refuses to run as root, so as root its files belong to the `postgres` system user.
set -euo pipefail

readonly TIMEOUT=${FERRY_TEST_DBS_TIMEOUT:-60} # seconds to wait for a server to accept connections
readonly STOP_TIMEOUT=30                        # seconds to wait for a server to exit

log() { echo "test-dbs: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}
usage() {
  echo "usage: $0 start <dir> | stop <dir>" >&2
  exit 2
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# --- binaries -----------------------------------------------------------------------------------

# The newest /usr/lib/postgresql/<ver>/bin with a server in it, else the dir of an initdb on PATH.
pg_bindir() {
  local d best=""
  for d in /usr/lib/postgresql/*/bin; do
    if [ ! -x "$d/initdb" ] || [ ! -x "$d/pg_ctl" ] || [ ! -x "$d/postgres" ]; then continue; fi
    if [ -z "$best" ] || [ "$(basename "$(dirname "$d")")" -gt "$(basename "$(dirname "$best")")" ] 2>/dev/null; then
      best=$d
    fi
  done
  if [ -z "$best" ] && command -v initdb >/dev/null 2>&1; then
    best=$(dirname "$(readlink -f "$(command -v initdb)")")
  fi
  [ -n "$best" ] && echo "$best"
}

# First existing executable among the names, looked up on PATH and in /usr/sbin (not on every PATH).
find_bin() {
  local n
  for n in "$@"; do
    if command -v "$n" >/dev/null 2>&1; then
      command -v "$n"
      return 0
    fi
    [ -x "/usr/sbin/$n" ] && { echo "/usr/sbin/$n"; return 0; }
  done
  return 1
}
mysqld_bin() { find_bin mariadbd mysqld; }
mysql_install_db_bin() { find_bin mariadb-install-db mysql_install_db; }
mysqladmin_bin() { find_bin mariadb-admin mysqladmin; }
mysql_client_bin() { find_bin mariadb mysql; }

# Installs postgresql / mariadb-server from Debian's packages when a binary is missing.
ensure_packages() {
  local need=()
  [ -n "$(pg_bindir)" ] && [ -x "$(pg_bindir)/psql" ] || need+=(postgresql)
  if ! mysqld_bin >/dev/null || ! mysql_install_db_bin >/dev/null; then
    need+=(mariadb-server)
  elif ! mysqladmin_bin >/dev/null || ! mysql_client_bin >/dev/null; then
    need+=(mariadb-client)
  fi
  [ "${#need[@]}" -eq 0 ] && return 0

  command -v apt-get >/dev/null 2>&1 ||
    die "missing ${need[*]} and no apt-get here: install PostgreSQL (initdb, pg_ctl, pg_isready, psql) and MariaDB (mariadbd, mariadb-install-db, mariadb-admin, mariadb) yourself"
  local sudo_cmd=()
  if ! is_root; then
    command -v sudo >/dev/null 2>&1 || die "missing ${need[*]}; run as root or install them: apt-get install ${need[*]}"
    sudo_cmd=(sudo)
  fi
  log "installing ${need[*]} (apt-get, once per machine)"

  # Keep the packages from starting the distro's own services (default cluster on 5432, mariadb on
  # 3306): we never use them. Docker-like images already ship such a policy-rc.d; add one only for
  # the duration of the install, and only if there is none.
  local policy=/usr/sbin/policy-rc.d added_policy=""
  if [ ! -e "$policy" ]; then
    if printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null 2>&1 &&
      "${sudo_cmd[@]}" chmod 755 "$policy"; then
      added_policy=1
    fi
  fi

  local apt=("${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -q)
  local rc=0
  # First without refreshing the package lists; refresh them only if that fails.
  if ! "${apt[@]}" install --no-install-recommends "${need[@]}" >&2; then
    log "install failed; running apt-get update and trying again"
    { "${apt[@]}" update >&2 && "${apt[@]}" install --no-install-recommends "${need[@]}" >&2; } || rc=$?
  fi
  [ -n "$added_policy" ] && "${sudo_cmd[@]}" rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install ${need[*]} failed (exit $rc); see above"

  [ -n "$(pg_bindir)" ] || die "postgresql installed but no /usr/lib/postgresql/<ver>/bin/initdb found"
  mysqld_bin >/dev/null || die "mariadb-server installed but no mariadbd/mysqld found"
}

# --- helpers ------------------------------------------------------------------------------------

# A port on 127.0.0.1 that nothing is bound to now, below the kernel's ephemeral range (so an
# outgoing connection won't take it before the server binds it).
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 - <<'PY'
import random, socket, sys
for _ in range(500):
    p = random.randint(20000, 32000)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    sys.exit(0)
sys.exit("no free port found")
PY
    return
  fi
  local p
  for _ in $(seq 1 500); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    # Nothing answers a connect: free (as far as we can tell without binding).
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  die "no free port found"
}

# Runs a command as the owner of the PostgreSQL files: `postgres` when we are root, else ourselves.
# From / so that an unreadable working directory does not bother initdb or the server.
as_pg() {
  if is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

# Gives files to the postgres user when we are root (the server runs as that user).
pg_own() {
  if is_root; then chown postgres:postgres "$@"; fi
}

# True while the process `pid` exists and its command line mentions `needle` (so a recycled pid of
# some other program is never taken for ours).
pid_is() {
  local pid=$1 needle=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$needle"
}

log_tail() {
  local f=$1
  if [ -f "$f" ]; then
    log "--- last lines of $f:"
    tail -n 30 "$f" >&2 || true
    log "---"
  fi
}

# Where the files of <dir> live. Normally <dir> itself. If <dir> is too deep for unix socket paths
# (~107 bytes) or, as root, not reachable by the postgres user (e.g. under /root), a short dir in
# /tmp is used instead: its path is kept in <dir>/base, and <dir>/pg and <dir>/mysql link there.
resolve_base() {
  local dir=$1
  if [ -f "$dir/base" ]; then
    cat "$dir/base"
  else
    echo "$dir"
  fi
}

choose_base() {
  local dir=$1
  if [ -f "$dir/base" ]; then
    local b
    b=$(cat "$dir/base")
    [ -d "$b" ] && { echo "$b"; return 0; }
    rm -f "$dir/base" "$dir/pg" "$dir/mysql"
  fi
  if [ -f "$dir/pg.initialised" ]; then
    echo "$dir" # initialised here by an earlier start
    return 0
  fi
  local ok=1
  [ "${#dir}" -le 70 ] || ok=0
  if [ "$ok" -eq 1 ] && is_root; then
    chmod a+x "$dir" 2>/dev/null || true
    runuser -u postgres -- test -x "$dir" 2>/dev/null || ok=0
  fi
  if [ "$ok" -eq 1 ]; then
    echo "$dir"
  else
    local b
    b=$(mktemp -d /tmp/ferry-dbs.XXXXXX)
    chmod 755 "$b"
    echo "$b" >"$dir/base"
    ln -sfn "$b/pg" "$dir/pg"
    ln -sfn "$b/mysql" "$dir/mysql"
    log "$dir is too deep or not reachable by the postgres user; servers' files are in $b"
    echo "$b"
  fi
}

# --- PostgreSQL ---------------------------------------------------------------------------------

pg_running() {
  local bin=$1 data=$2
  [ -f "$data/postmaster.pid" ] && as_pg "$bin/pg_ctl" status -D "$data" >/dev/null 2>&1
}

pg_start() {
  local base=$1 bin data logf port attempt
  bin=$(pg_bindir)
  data=$base/pg
  logf=$base/pg.log

  if pg_running "$bin" "$data" && [ -f "$base/pg.port" ]; then
    port=$(cat "$base/pg.port")
    log "postgres already running on 127.0.0.1:$port"
    echo "$port"
    return 0
  fi

  if is_root; then
    id postgres >/dev/null 2>&1 || die "no postgres system user (it comes with the postgresql package); PostgreSQL cannot run as root"
  fi

  if [ ! -f "$base/pg.initialised" ]; then
    log "initialising postgres in $data"
    rm -rf "$data"
    mkdir -p "$data"
    chmod 700 "$data"
    pg_own "$data"
    if ! as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --no-locale --no-sync >"$base/pg-initdb.log" 2>&1; then
      log_tail "$base/pg-initdb.log"
      die "initdb failed"
    fi
    cat >"$data/pg_hba.conf" <<'EOF'
# throwaway test cluster: trust on its private unix socket, passwords over TCP
local all all                trust
host  all all 127.0.0.1/32   scram-sha-256
EOF
    cat >>"$data/postgresql.conf" <<EOF

# --- throwaway test settings (scripts/test-dbs.sh); the port is given at start
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
max_connections = 300
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
timezone = 'UTC'
log_timezone = 'UTC'
EOF
    pg_own "$data/pg_hba.conf" "$data/postgresql.conf"
    touch "$base/pg.initialised"
  fi

  for attempt in 1 2 3; do
    port=$(free_port)
    : >"$logf"
    pg_own "$logf"
    log "starting postgres on 127.0.0.1:$port"
    if as_pg "$bin/pg_ctl" start -D "$data" -l "$logf" -o "-p $port" -w -t "$TIMEOUT" >&2; then
      break
    fi
    if [ "$attempt" -lt 3 ] && grep -qiE 'could not bind|address already in use' "$logf"; then
      log "port $port was taken meanwhile; trying another"
      continue
    fi
    log_tail "$logf"
    die "postgres did not start within ${TIMEOUT}s (log: $logf)"
  done

  # pg_ctl -w waited already; make sure TCP answers too, within the deadline.
  local deadline=$((SECONDS + TIMEOUT))
  until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log_tail "$logf"
      die "postgres not ready on 127.0.0.1:$port after ${TIMEOUT}s"
    fi
    sleep 0.2
  done
  echo "$port" >"$base/pg.port"

  "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$data" -p "$port" -U postgres -d postgres >&2 <<'SQL' ||
SELECT 'CREATE ROLE ferry LOGIN CREATEDB'
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ferry') \gexec
ALTER ROLE ferry WITH LOGIN CREATEDB PASSWORD 'ferry';
SELECT 'CREATE DATABASE ferry_test OWNER ferry'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'ferry_test') \gexec
GRANT ALL PRIVILEGES ON DATABASE ferry_test TO ferry;
SQL
    die "could not create the ferry role / ferry_test database in postgres"
  echo "$port"
}

pg_stop() {
  local base=$1 bin data pid
  data=$base/pg
  [ -f "$data/postmaster.pid" ] || return 0
  pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)
  bin=$(pg_bindir || true)
  if [ -n "$bin" ] && pg_running "$bin" "$data"; then
    log "stopping postgres ($data)"
    as_pg "$bin/pg_ctl" stop -D "$data" -m fast -w -t "$STOP_TIMEOUT" >&2 || true
  fi
  if pid_is "$pid" "$data"; then
    log "postgres $pid still there; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  return 0
}

# --- MariaDB ------------------------------------------------------------------------------------

mysql_running() {
  local base=$1 pid
  [ -f "$base/mysql.pid" ] || return 1
  pid=$(cat "$base/mysql.pid" 2>/dev/null || true)
  pid_is "$pid" "$base/mysql.cnf"
}

write_mysql_cnf() {
  local base=$1 port=$2
  local user_line=""
  if is_root; then user_line="user = root"; fi
  cat >"$base/mysql.cnf" <<EOF
# throwaway test server (scripts/test-dbs.sh)
[mysqld]
$user_line
datadir = $base/mysql
socket = $base/mysql.sock
pid-file = $base/mysql.pid
log-error = $base/mysql.log
bind-address = 127.0.0.1
port = $port
skip-name-resolve
skip-log-bin
skip-external-locking
max_connections = 300
innodb_buffer_pool_size = 256M
innodb_flush_log_at_trx_commit = 2
innodb_doublewrite = 0
innodb_use_native_aio = 0
character-set-server = utf8mb4
collation-server = utf8mb4_unicode_ci
tmpdir = $base/tmp
EOF
}

mysql_start() {
  local base=$1 port attempt pid mysqld admin client
  mysqld=$(mysqld_bin)
  admin=$(mysqladmin_bin)
  client=$(mysql_client_bin)

  if mysql_running "$base" && [ -f "$base/mysql.port" ]; then
    port=$(cat "$base/mysql.port")
    log "mariadb already running on 127.0.0.1:$port"
    echo "$port"
    return 0
  fi
  mkdir -p "$base/tmp"

  if [ ! -f "$base/mysql.initialised" ]; then
    log "initialising mariadb in $base/mysql"
    rm -rf "$base/mysql"
    mkdir -p "$base/mysql"
    write_mysql_cnf "$base" 0
    local extra=()
    if is_root; then extra+=(--user=root); fi
    if ! (cd / && "$(mysql_install_db_bin)" --defaults-file="$base/mysql.cnf" "${extra[@]}" \
      --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
      >"$base/mysql-install.log" 2>&1); then
      log_tail "$base/mysql-install.log"
      die "mariadb-install-db failed"
    fi
    touch "$base/mysql.initialised"
  fi

  local ready=""
  for attempt in 1 2 3; do
    port=$(free_port)
    write_mysql_cnf "$base" "$port"
    : >"$base/mysql.log"
    rm -f "$base/mysql.pid"
    log "starting mariadb on 127.0.0.1:$port"
    # Detached, with no inherited stdout/stderr: a caller's $(...) must not wait on the server.
    (cd / && exec setsid "$mysqld" --defaults-file="$base/mysql.cnf" </dev/null >>"$base/mysql.log" 2>&1) &
    pid=$!
    local deadline=$((SECONDS + TIMEOUT))
    while :; do
      if "$admin" --no-defaults --socket="$base/mysql.sock" -uroot --connect-timeout=2 ping >/dev/null 2>&1 &&
        "$admin" --no-defaults -h 127.0.0.1 -P "$port" -uroot --connect-timeout=2 ping >/dev/null 2>&1; then
        ready=1
        break
      fi
      # Server exited? ($pid is setsid's, which becomes mariadbd; the pid file is mariadbd's own.)
      kill -0 "$pid" 2>/dev/null || mysql_running "$base" || break
      [ "$SECONDS" -lt "$deadline" ] || break
      sleep 0.2
    done
    [ -n "$ready" ] && break
    if ! kill -0 "$pid" 2>/dev/null && [ "$attempt" -lt 3 ] &&
      grep -qiE "can't start server.*bind|address already in use" "$base/mysql.log"; then
      log "port $port was taken meanwhile; trying another"
      continue
    fi
    local why="did not become ready on 127.0.0.1:$port within ${TIMEOUT}s"
    if ! kill -0 "$pid" 2>/dev/null && ! mysql_running "$base"; then
      why="exited during startup"
    fi
    kill -KILL "$pid" 2>/dev/null || true
    log_tail "$base/mysql.log"
    die "mariadb $why (log: $base/mysql.log)"
  done
  echo "$port" >"$base/mysql.port"

  "$client" --no-defaults --socket="$base/mysql.sock" -uroot >&2 <<'SQL' ||
CREATE DATABASE IF NOT EXISTS ferry_test CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'ferry'@'127.0.0.1' IDENTIFIED BY 'ferry';
CREATE USER IF NOT EXISTS 'ferry'@'localhost' IDENTIFIED BY 'ferry';
GRANT ALL PRIVILEGES ON *.* TO 'ferry'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'ferry'@'localhost';
FLUSH PRIVILEGES;
SQL
    die "could not create the ferry user / ferry_test database in mariadb"
  echo "$port"
}

mysql_stop() {
  local base=$1 pid
  [ -f "$base/mysql.pid" ] || return 0
  pid=$(cat "$base/mysql.pid" 2>/dev/null || true)
  pid_is "$pid" "$base/mysql.cnf" || return 0
  log "stopping mariadb ($base/mysql)"
  kill -TERM "$pid" 2>/dev/null || true # a clean shutdown, like mariadb-admin shutdown
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while pid_is "$pid" "$base/mysql.cnf" && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.2
  done
  if pid_is "$pid" "$base/mysql.cnf"; then
    log "mariadb $pid still there after ${STOP_TIMEOUT}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$base/mysql.pid"
  return 0
}

# --- commands -----------------------------------------------------------------------------------

cmd_start() {
  local dir=$1 base pg_port my_port
  ensure_packages
  command -v runuser >/dev/null 2>&1 || ! is_root || die "runuser (util-linux) not found"
  command -v setsid >/dev/null 2>&1 || die "setsid (util-linux) not found"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  base=$(choose_base "$dir")
  pg_port=$(pg_start "$base")
  # If MariaDB fails, leave no postgres behind.
  if ! my_port=$(mysql_start "$base"); then
    pg_stop "$base"
    exit 1
  fi
  log "ready: postgres on 127.0.0.1:$pg_port, mariadb on 127.0.0.1:$my_port (stop: $0 stop $dir)"
  echo "export FERRY_TEST_PG_URL=postgres://ferry:ferry@127.0.0.1:$pg_port/ferry_test"
  echo "export FERRY_TEST_MYSQL_URL=mysql://ferry:ferry@127.0.0.1:$my_port/ferry_test"
}

cmd_stop() {
  local dir=$1 base
  if [ ! -d "$dir" ]; then
    log "$dir does not exist; nothing to stop"
    return 0
  fi
  dir=$(cd "$dir" && pwd -P)
  base=$(resolve_base "$dir")
  [ -d "$base" ] || return 0
  pg_stop "$base"
  mysql_stop "$base"
  if [ "$base" != "$dir" ]; then
    # The files lived in /tmp on <dir>'s behalf: removing <dir> would not remove them.
    rm -rf "$base"
    rm -f "$dir/base" "$dir/pg" "$dir/mysql"
  fi
  log "stopped"
}

[ "$#" -eq 2 ] || usage
[ -n "$2" ] || usage
case "$1" in
  start) cmd_start "$2" ;;
  stop) cmd_stop "$2" ;;
  *) usage ;;
esac
