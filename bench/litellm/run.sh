#!/usr/bin/env bash
# chatq and LiteLLM's proxy side by side: non-streaming chat completions per second, closed loop,
# both in front of the same `chatq mock-llm`, measured by the same load generator in the same
# run (`chatq bench completions` with LiteLLM as a --completions-peer). LiteLLM is only the peer
# compared against: it lives in a venv of its own, outside the clone, and chatq never uses it.
#
#   bench/litellm/run.sh [chatq-bench options...]
#
# Defaults: mock at 0 ms, 64 connections, 20 s per target, LiteLLM with 2 workers. Options given
# are passed on and override them, e.g. `--completions-mock-ms 50 --completions-seconds 15`.
#
# Environment (all optional):
#   CQ_LITELLM_VERSION   the LiteLLM release installed from PyPI (default below)
#   CQ_LITELLM_WORKERS   LiteLLM's worker processes (default 2)
#   CQ_BENCH_BIN_DIR     a directory holding chatq and chatq-bench; without it they are built
#                        with `cargo build --release -p chatq -p chatq-bench`
#
# It starts nothing on a port in use: the mock and LiteLLM listen on free ports of 127.0.0.1,
# Postgres and NATS are started only if they are not running (scripts/lib.sh), and LiteLLM is
# stopped again however the run ends.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
cd "$CQ_ROOT"

version=${CQ_LITELLM_VERSION:-1.106.2}
workers=${CQ_LITELLM_WORKERS:-2}
venv=$CQ_CACHE_DIR/litellm-$version

info "checking local services"
ensure_postgres
ensure_nats

if [[ -n ${CQ_BENCH_BIN_DIR:-} ]]; then
    bin_dir=$CQ_BENCH_BIN_DIR
else
    need_cmd cargo "install Rust with rustup (https://rustup.rs), then run this again"
    info "cargo build --release -p chatq -p chatq-bench"
    cargo build --release -p chatq -p chatq-bench
    target_dir=$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    bin_dir=$target_dir/release
fi
[[ -x $bin_dir/chatq && -x $bin_dir/chatq-bench ]] ||
    die "no chatq and chatq-bench in $bin_dir" "build them, or point CQ_BENCH_BIN_DIR at them"

if ! "$venv/bin/litellm" --version >/dev/null 2>&1; then
    info "installing LiteLLM $version from PyPI into $venv"
    rm -rf "$venv"
    "$(_base_python)" -m venv "$venv" || die "could not create a venv at $venv" \
        "on Debian: apt-get install python3-venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "litellm[proxy]==$version" ||
        die "pip could not install litellm[proxy]==$version" "check that PyPI is reachable"
fi

# free_port: a port nothing listens on now, chosen by the kernel.
free_port() {
    "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
mock_port=$(free_port)
litellm_port=$(free_port)
work=$(mktemp -d "${TMPDIR:-/tmp}/cq-litellm.XXXXXX")
litellm_pid=
cleanup() {
    if [[ -n $litellm_pid ]]; then
        # LiteLLM runs in a process group of its own (setsid): its workers end with it.
        kill -TERM -- "-$litellm_pid" 2>/dev/null || true
        wait "$litellm_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# LiteLLM refuses to start without a key (it would accept every request otherwise); one per run.
master_key=sk-bench-$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(16))')
# The bench starts the mock on $mock_port (--completions-mock-addr); LiteLLM calls it only when
# a request comes, so it can be configured first.
cat >"$work/config.yaml" <<YAML
model_list:
  - model_name: mock-model
    litellm_params:
      model: openai/mock-model
      api_base: http://127.0.0.1:$mock_port/v1
      api_key: not-checked
litellm_settings:
  telemetry: false
general_settings:
  master_key: $master_key
YAML

info "starting LiteLLM $version on 127.0.0.1:$litellm_port ($workers workers) in front of 127.0.0.1:$mock_port"
# No network at start-up (the model price list ships with the package), errors only in its log.
# A worker imports LiteLLM for 5–15 s on a busy 2-core machine, longer than uvicorn's default
# health check of a new worker (5 s), which would then restart it again and again.
LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR setsid "$venv/bin/litellm" \
    --config "$work/config.yaml" --host 127.0.0.1 --port "$litellm_port" \
    --num_workers "$workers" --timeout_worker_healthcheck 120 >"$work/litellm.log" 2>&1 &
litellm_pid=$!
# Ready when a worker answers (the parent listens before its workers have imported anything);
# importing LiteLLM takes seconds, on a busy machine a minute or more.
ready=
for _ in $(seq 300); do
    kill -0 "$litellm_pid" 2>/dev/null || break
    if "$venv/bin/python" - "$litellm_port" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health/liveliness", timeout=2)
PY
        ready=1
        break
    fi
    sleep 1
done
if [[ -z $ready ]]; then
    tail -n 30 "$work/litellm.log" >&2
    die "LiteLLM did not answer on 127.0.0.1:$litellm_port" "its log is above"
fi
ok "LiteLLM answering"

info "$bin_dir/chatq-bench completions, chatq and LiteLLM against the same mock"
"$bin_dir/chatq-bench" completions \
    --completions-mock-addr "127.0.0.1:$mock_port" \
    --completions-peer "litellm-$version=http://127.0.0.1:$litellm_port/v1" \
    --completions-peer-key "$master_key" \
    --completions-mock-ms 0 --concurrency 64 --completions-seconds 20 \
    "$@"
