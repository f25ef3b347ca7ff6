#!/usr/bin/env bash
# edgepop vs nginx 1.22 + unbound, side by side on loopback, one core each. See benches/README.md.
#
#   benches/load/run.sh                      # everything, ~4 minutes after the build
#   benches/load/run.sh --quick              # 3 s per scenario: a smoke test of the harness
#   benches/load/run.sh --only h2,handshake  # a subset
#   benches/load/run.sh --repeat 3           # 3 rounds, sides alternating; the table shows medians
#
# Layout: the proxy under test is pinned to PROXY_CPU (core 1) with one worker; the load generator, the origin
# (a second nginx serving static files) and unbound are pinned to LOAD_CPU (core 0). Every process this script
# starts is recorded by PID and stopped by PID on exit; nothing is killed by name.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RESULTS_DIR="$ROOT/benches/results"
COMMAND_LINE="benches/load/run.sh${*:+ $*}"

ALL_SCENARIOS="passthrough,cache-small,cache-gzip,https,h2,handshake,memory,origin"
ONLY=$ALL_SCENARIOS
SIDES="edgepop,nginx"
DUR=10            # seconds per throughput scenario
HS_DUR=10         # seconds per handshake scenario
CONNS=64          # wrk -c for keepalive scenarios
HS_CONNS=32       # wrk -c for the handshake scenario
IDLE_CONNS=1000
REPEAT=1
BUILD=1
INSTALL=1
KEEP=0
WAIT_QUIET=0
NGINX_DNS=static
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BASE_PORT=${BASE_PORT:-18000}
EDGEPOP_BIN=${EDGEPOP_BIN:-"${CARGO_TARGET_DIR:-$ROOT/target}/release/edgepop"}

usage() {
    cat <<EOF
usage: $0 [options]
  --quick              3 s per scenario, for checking the harness itself
  --only LIST          comma-separated subset of: $ALL_SCENARIOS
                       (idle RSS is always measured; 'memory' adds the 1,000-idle-connection profile)
  --sides LIST         edgepop,nginx (default both, in that order)
  --duration S         seconds per throughput scenario (default $DUR)
  --handshake-duration S  seconds per handshake scenario (default $HS_DUR)
  --connections N      wrk connections for keepalive scenarios (default $CONNS)
  --repeat N           rounds; sides alternate within a round; the table shows medians (default 1)
  --nginx-dns MODE     static (default): upstream block + keepalive 64;
                       runtime: proxy_pass via a variable, resolved per request through unbound (no upstream keepalive)
  --no-build           use the existing $EDGEPOP_BIN
  --no-install         never call apt-get
  --keep               keep the run directory (configs, logs, raw tool output)
  --wait-quiet S       before measuring, wait up to S seconds for every CPU to be under 10% busy (shared machines)
environment: PROXY_CPU (default 1), LOAD_CPU (default 0), BASE_PORT (default 18000), EDGEPOP_BIN
EOF
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) DUR=3; HS_DUR=3 ;;
        --only) ONLY=$2; shift ;;
        --only=*) ONLY=${1#*=} ;;
        --sides) SIDES=$2; shift ;;
        --duration) DUR=$2; shift ;;
        --handshake-duration) HS_DUR=$2; shift ;;
        --connections) CONNS=$2; shift ;;
        --repeat) REPEAT=$2; shift ;;
        --nginx-dns) NGINX_DNS=$2; shift ;;
        --no-build) BUILD=0 ;;
        --no-install) INSTALL=0 ;;
        --keep) KEEP=1 ;;
        --wait-quiet) WAIT_QUIET=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 64 ;;
    esac
    shift
done
for s in ${ONLY//,/ }; do
    [[ ",$ALL_SCENARIOS," == *",$s,"* ]] || { echo "unknown scenario: $s (known: $ALL_SCENARIOS)" >&2; exit 64; }
done
[[ $NGINX_DNS == static || $NGINX_DNS == runtime ]] || { echo "--nginx-dns must be static or runtime" >&2; exit 64; }
for n in "$DUR" "$HS_DUR" "$CONNS" "$REPEAT"; do
    [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 600 ]] || { echo "durations and counts must be 1..600: $n" >&2; exit 64; }
done
[[ $WAIT_QUIET =~ ^[0-9]+$ && $WAIT_QUIET -le 3600 ]] || { echo "--wait-quiet must be 0..3600" >&2; exit 64; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }

ORIGIN_PORT=$((BASE_PORT + 80))
HTTP_PORT=$((BASE_PORT + 81))
HTTPS_PORT=$((BASE_PORT + 443))
UNBOUND_PORT=$((BASE_PORT + 53))
ADMIN_PORT=$((BASE_PORT + 901))

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------------------------------- processes
# Every background process is recorded here and stopped by PID (TERM, then KILL after 10 s).
PIDS=()
RUN_DIR=""

stop_pid() {
    local pid=$1 i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop on TERM; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

cleanup() {
    local rc=$? p
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$p"; done
    if [[ -n $RUN_DIR && -d $RUN_DIR ]]; then
        if [[ $KEEP == 1 || $rc != 0 ]]; then
            log "run directory kept: $RUN_DIR"
        else
            rm -rf "$RUN_DIR"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg NAME CPU CMD...: runs CMD pinned to CPU, output to RUN_DIR/NAME.out; sets LAST_PID.
start_bg() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$RUN_DIR/$name.out" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

tools() { taskset -c "$LOAD_CPU" python3 "$HERE/tools.py" "$@"; }

# wait_http NAME PID URL [curl args...]: polls until URL answers 200 (20 s), failing early if PID exits.
wait_http() {
    local name=$1 pid=$2 url=$3 i code
    shift 3
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$RUN_DIR/$name.out" >&2 || true; die "$name exited during start-up"; }
        code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$@" "$url" 2>/dev/null || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    tail -n 20 "$RUN_DIR/$name.out" >&2 || true
    die "$name did not answer 200 on $url within 20 s"
}

# ------------------------------------------------------------------------------------------- tools, build
need_pkg=()
for pair in wrk:wrk h2load:nghttp2-client nginx:nginx-light unbound:unbound envsubst:gettext-base \
    taskset:util-linux openssl:openssl curl:curl jq:jq python3:python3; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [[ -x /usr/sbin/${pair%%:*} ]] || need_pkg+=("${pair#*:}")
done
if [[ ${#need_pkg[@]} -gt 0 ]]; then
    [[ $INSTALL == 1 ]] || die "missing: ${need_pkg[*]} (and --no-install given)"
    log "installing ${need_pkg[*]}"
    SUDO=""
    [[ $EUID == 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkg[@]}"
fi
export PATH="$PATH:/usr/sbin:/sbin"

if [[ $BUILD == 1 ]]; then
    log "cargo build --release -p edgepop (may wait on cargo's lock while others build)"
    (cd "$ROOT" && cargo build --release -p edgepop)
fi
[[ -x $EDGEPOP_BIN ]] || die "no edgepop binary at $EDGEPOP_BIN (build it, or set EDGEPOP_BIN)"

# ------------------------------------------------------------------------------------------- machine info
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
GOVERNOR=$(cat "/sys/devices/system/cpu/cpu$PROXY_CPU/cpufreq/scaling_governor" 2>/dev/null || echo "n/a (no cpufreq)")
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null || true) ]]; then GIT_REV="$GIT_REV+dirty"; fi
NGINX_VERSION=$(nginx -v 2>&1)
EDGEPOP_VERSION=$("$EDGEPOP_BIN" --version)
echo "== machine"
echo "date:      $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "command:   $COMMAND_LINE"
echo "nproc:     $(nproc)"
echo "cpu:       $CPU_MODEL"
echo "kernel:    $(uname -sr)"
echo "governor:  $GOVERNOR"
echo "loadavg:   $(cut -d' ' -f1-3 /proc/loadavg) (before the run; anything above ~0 means other work shares the cores)"
echo "nginx:     $NGINX_VERSION"
echo "unbound:   $(unbound -V 2>&1 | awk 'NR==1')"
echo "wrk:       $(wrk -v 2>&1 | awk 'NR==1' | cut -d' ' -f1-2)"
echo "h2load:    $(h2load --version 2>&1 | awk 'NR==1')"
echo "edgepop:   $EDGEPOP_VERSION (git $GIT_REV)"
echo "pinning:   proxy on CPU $PROXY_CPU; load generator, origin, unbound on CPU $LOAD_CPU"
echo "scenarios: $ONLY; sides $SIDES; $DUR s each ($HS_DUR s handshakes); rounds $REPEAT; nginx dns $NGINX_DNS"
(( $(nproc) >= 2 )) || log "warning: fewer than 2 CPUs: pinning cannot separate the proxy from the load"
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------------------------------- run directory
RUN_DIR=$(mktemp -d /tmp/edgepop-bench.XXXXXX)
chmod 755 "$RUN_DIR"
mkdir -p "$RUN_DIR"/{www,origin-tmp,nginx-tmp,nginx-cache} "$RESULTS_DIR"
RESULTS="$RUN_DIR/results.jsonl"
NOTES="$RUN_DIR/notes.txt"
: >"$RESULTS"
: >"$NOTES"
note() { echo "$*" >>"$NOTES"; log "note: $*"; }

# Certificates for bench.test, the same files for both proxies: ECDSA P-256 (main run) and RSA 2048.
for kind in ecdsa rsa; do
    dir="$RUN_DIR/certs-$kind/bench.test"
    mkdir -p "$dir"
    if [[ $kind == ecdsa ]]; then newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1); else newkey=(-newkey rsa:2048); fi
    openssl req -x509 "${newkey[@]}" -nodes -days 7 -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
        -keyout "$dir/key.pem" -out "$dir/chain.pem" 2>/dev/null
done
tools content "$RUN_DIR/www"

export RUN_DIR ORIGIN_PORT HTTP_PORT HTTPS_PORT UNBOUND_PORT ADMIN_PORT CERTS_DIR NGINX_USER NGINX_UPSTREAM EDGEPOP_ALLOW_ROOT
# As root: nginx workers stay root (so they can write the root-owned cache and temp dirs); edgepop may stay root.
NGINX_USER=""
EDGEPOP_ALLOW_ROOT=""
if [[ $EUID == 0 ]]; then
    NGINX_USER="user root root;"
    EDGEPOP_ALLOW_ROOT="allow-root = true"
fi
if [[ $NGINX_DNS == static ]]; then
    NGINX_UPSTREAM='proxy_pass http://origin;'
else
    NGINX_UPSTREAM="set \$origin_host origin.bench.test; proxy_pass http://\$origin_host:$ORIGIN_PORT;"
fi
VARS='${RUN_DIR} ${ORIGIN_PORT} ${HTTP_PORT} ${HTTPS_PORT} ${UNBOUND_PORT} ${ADMIN_PORT} ${CERTS_DIR} ${NGINX_USER} ${NGINX_UPSTREAM} ${EDGEPOP_ALLOW_ROOT}'
envsubst "$VARS" <"$HERE/origin.conf.template" >"$RUN_DIR/origin.conf"
envsubst "$VARS" <"$HERE/unbound.conf.template" >"$RUN_DIR/unbound.conf"
for kind in ecdsa rsa; do
    CERTS_DIR="$RUN_DIR/certs-$kind"
    envsubst "$VARS" <"$HERE/nginx.conf.template" >"$RUN_DIR/nginx-$kind.conf"
    envsubst "$VARS" <"$HERE/edgepop.toml.template" >"$RUN_DIR/edgepop-$kind.toml.in"
    sed -e '/^#cache:/d' "$RUN_DIR/edgepop-$kind.toml.in" >"$RUN_DIR/edgepop-$kind.plain.toml"
    sed -e 's/^#cache: \{0,1\}//' "$RUN_DIR/edgepop-$kind.toml.in" >"$RUN_DIR/edgepop-$kind.cache.toml"
done

nginx -t -q -c "$RUN_DIR/nginx-ecdsa.conf" -e "$RUN_DIR/nginx-check.log" || die "nginx rejected $RUN_DIR/nginx-ecdsa.conf"
"$EDGEPOP_BIN" check --config "$RUN_DIR/edgepop-ecdsa.plain.toml" >"$RUN_DIR/edgepop-check.out" 2>&1 ||
    { cat "$RUN_DIR/edgepop-check.out" >&2; die "edgepop check rejected the rendered config"; }
EDGEPOP_VARIANT=plain
if "$EDGEPOP_BIN" check --config "$RUN_DIR/edgepop-ecdsa.cache.toml" >"$RUN_DIR/edgepop-check-cache.out" 2>&1; then
    EDGEPOP_VARIANT=cache
    note "edgepop: the #cache: lines of edgepop.toml.template were accepted by edgepop check and are in use"
else
    note "edgepop: edgepop check rejected the #cache: lines of edgepop.toml.template ($(grep -m1 -v '^invalid configuration' "$RUN_DIR/edgepop-check-cache.out" | sed 's/^ *//' | cut -c1-140)); edgepop ran without cache/compression settings"
fi

# ------------------------------------------------------------------------------------------- shared daemons
start_bg unbound "$LOAD_CPU" unbound -d -c "$RUN_DIR/unbound.conf"
UNBOUND_PID=$LAST_PID
tools dns-check --port "$UNBOUND_PORT" --name origin.bench.test --timeout 10 ||
    { tail -n 20 "$RUN_DIR/unbound.out" >&2; die "unbound did not answer"; }

start_bg origin "$LOAD_CPU" nginx -c "$RUN_DIR/origin.conf" -e "$RUN_DIR/origin-error.log"
ORIGIN_PID=$LAST_PID
wait_http origin "$ORIGIN_PID" "http://127.0.0.1:$ORIGIN_PORT/nostore"
log "origin (nginx pid $ORIGIN_PID) on :$ORIGIN_PORT, unbound (pid $UNBOUND_PID) on :$UNBOUND_PORT"

origin_requests() {
    curl -s -m 2 "http://127.0.0.1:$ORIGIN_PORT/__origin_status" | awk 'NR == 3 {print $3}'
}

# ------------------------------------------------------------------------------------------- measuring
SIDE=""
SIDE_ROOTS=()
ROUND=1
side_pids() { tools pids "${SIDE_ROOTS[@]}"; }

# record_mem WHAT JSON [DETAIL]
record_mem() {
    jq -c --arg side "$SIDE" --arg what "$1" --argjson round "$ROUND" --arg detail "${3:-}" \
        '. + {kind: "memory", side: $side, what: $what, round: $round} + (if $detail == "" then {} else {detail: $detail} end)' \
        <<<"$2" >>"$RESULTS"
    log "$SIDE memory $1: $(jq -r '"RSS \(.rss_kib / 1024 | floor) MiB, PSS \(.pss_kib / 1024 | floor) MiB"' <<<"$2")"
}

# run_load NAME TOOL NOTE CPU -- ARGS...: runs wrk/h2load pinned to CPU, measures the side's CPU and the cores.
run_load() {
    local name=$1 tool=$2 scen_note=$3 cpu=$4
    shift 5
    local out="$RUN_DIR/$SIDE-$name-r$ROUND.txt" h2log="" pids c0 c1 t0 t1 s0 s1 line
    pids=$(side_pids)
    # shellcheck disable=SC2086
    c0=$(tools cpu $pids)
    s0=$(tools corestat)
    t0=$(date +%s.%N)
    if [[ $tool == h2load ]]; then
        h2log="$RUN_DIR/$SIDE-$name-r$ROUND.h2log"
        taskset -c "$cpu" timeout $((DUR + HS_DUR + 60)) h2load "$@" --log-file="$h2log" >"$out" 2>&1 || true
    else
        taskset -c "$cpu" timeout $((DUR + HS_DUR + 60)) wrk "$@" >"$out" 2>&1 || true
    fi
    t1=$(date +%s.%N)
    s1=$(tools corestat)
    # shellcheck disable=SC2086
    c1=$(tools cpu $pids)
    line=$(tools scenario --side "$SIDE" --name "$name" --round "$ROUND" --tool "$tool" --out "$out" --log "$h2log" \
        --cpu-before "$c0" --cpu-after "$c1" --wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
        --stat-before "$s0" --stat-after "$s1" --proxy-cpu "$PROXY_CPU" --load-cpu "$LOAD_CPU" --note "$scen_note")
    echo "$line" >>"$RESULTS"
    [[ -z $h2log ]] || rm -f "$h2log"
    log "$SIDE $name: $(jq -r '"\(.rps | floor) req/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, errors \(.socket_errors + .non2xx), proxy busy \(.cpu_busy), other work on proxy core \(.proxy_core_other)"' <<<"$line")"
    if [[ $(jq -r '.requests' <<<"$line") == 0 ]]; then
        log "$SIDE $name produced no requests; tool output:"
        tail -n 15 "$out" >&2 || true
    fi
}

# probe_side: which features this side really has (cache, gzip, h2), checked against the origin's counter.
probe_side() {
    local base="http://127.0.0.1:$HTTP_PORT" before after urls=() i enc size ver
    curl -s -H 'Host: bench.test' "$base/small" "$base/small" "$base/big.html" >/dev/null || true
    for ((i = 0; i < 20; i++)); do urls+=("$base/small"); done
    before=$(origin_requests)
    curl -s -H 'Host: bench.test' "${urls[@]}" >/dev/null || true
    after=$(origin_requests)
    local fetched=$((after - before - 1))
    if ((fetched <= 1)); then
        CACHE_NOTE=""
        log "$SIDE: caches /small (origin saw $fetched of 20 requests)"
    else
        CACHE_NOTE="$SIDE did not cache: the origin saw $fetched of 20 /small requests, so this is pass-through"
        note "$CACHE_NOTE"
    fi
    enc=$(curl -s -D - -o "$RUN_DIR/probe.body" -H 'Host: bench.test' -H 'Accept-Encoding: gzip' "$base/big.html" |
        awk -F': *' 'tolower($1) == "content-encoding" {gsub(/\r/, "", $2); print $2}')
    size=$(stat -c %s "$RUN_DIR/probe.body")
    if [[ $enc == gzip ]]; then
        GZIP_NOTE="$SIDE sent gzip ($size bytes for the 102400-byte page)"
    else
        GZIP_NOTE="$SIDE sent ${enc:-identity} ($size bytes): no compression"
        note "$GZIP_NOTE"
    fi
    log "$SIDE: $GZIP_NOTE"
    ver=$(curl -sk -o /dev/null -w '%{http_version}' --http2 --connect-to "bench.test:$HTTPS_PORT:127.0.0.1:$HTTPS_PORT" \
        "https://bench.test:$HTTPS_PORT/nostore" || true)
    [[ $ver == 2 ]] || note "$SIDE did not negotiate HTTP/2 with curl (got HTTP/$ver)"
}

# start_side KIND (ecdsa|rsa): starts the proxy of SIDE pinned to PROXY_CPU, sets SIDE_ROOTS.
start_side() {
    local kind=$1
    if [[ $SIDE == edgepop ]]; then
        start_bg "edgepop-$kind-r$ROUND" "$PROXY_CPU" "$EDGEPOP_BIN" run --config "$RUN_DIR/edgepop-$kind.$EDGEPOP_VARIANT.toml"
        PROXY_PID=$LAST_PID
        SIDE_ROOTS=("$PROXY_PID")
    else
        start_bg "nginx-$kind-r$ROUND" "$PROXY_CPU" nginx -c "$RUN_DIR/nginx-$kind.conf" -e "$RUN_DIR/nginx-error.log"
        PROXY_PID=$LAST_PID
        # unbound is the nginx side's resolver and cache, the part edgepop replaces: counted here only.
        SIDE_ROOTS=("$PROXY_PID" "$UNBOUND_PID")
    fi
    wait_http "$SIDE-$kind-r$ROUND" "$PROXY_PID" "http://127.0.0.1:$HTTP_PORT/nostore" -H 'Host: bench.test'
    wait_http "$SIDE-$kind-r$ROUND" "$PROXY_PID" "https://bench.test:$HTTPS_PORT/nostore" -k \
        --connect-to "bench.test:$HTTPS_PORT:127.0.0.1:$HTTPS_PORT"
    log "$SIDE ($kind) up: pid $PROXY_PID, processes $(side_pids)"
}

run_side() {
    SIDE=$1
    log "=== $SIDE, round $ROUND"
    start_side ecdsa
    probe_side
    sleep 1
    record_mem idle "$(tools mem $(side_pids))"
    # Warm-up, not recorded: connection pools, allocator, page cache.
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s -s "$HERE/connect-to.lua" "http://bench.test:$HTTP_PORT/nostore" >/dev/null 2>&1 || true

    # URLs name bench.test (the Host header and the SNI wrk sends); connect-to.lua makes wrk connect to 127.0.0.1.
    local http="http://bench.test:$HTTP_PORT" https="https://bench.test:$HTTPS_PORT"
    local wrk_args=(-t1 -c"$CONNS" -d"${DUR}s" --latency -s "$HERE/connect-to.lua")
    if want passthrough; then run_load passthrough wrk "" "$LOAD_CPU" -- "${wrk_args[@]}" "$http/nostore"; fi
    local sampler_pid="" stop="$RUN_DIR/sampler-$SIDE-r$ROUND.stop" peak="$RUN_DIR/sampler-$SIDE-r$ROUND.json"
    if want cache-small || want cache-gzip; then
        # shellcheck disable=SC2046
        start_bg "sampler-$SIDE-r$ROUND" "$LOAD_CPU" python3 "$HERE/tools.py" sample --out "$peak" --stop "$stop" \
            --max-seconds $((2 * DUR + 30)) $(side_pids)
        sampler_pid=$LAST_PID
    fi
    if want cache-small; then run_load cache-small wrk "$CACHE_NOTE" "$LOAD_CPU" -- "${wrk_args[@]}" "$http/small"; fi
    if want cache-gzip; then
        run_load cache-gzip wrk "$(echo "$CACHE_NOTE${CACHE_NOTE:+; }$GZIP_NOTE")" "$LOAD_CPU" -- "${wrk_args[@]}" \
            -H 'Accept-Encoding: gzip' "$http/big.html"
    fi
    if [[ -n $sampler_pid ]]; then
        touch "$stop"
        local i
        for ((i = 0; i < 50; i++)); do kill -0 "$sampler_pid" 2>/dev/null || break; sleep 0.1; done
        stop_pid "$sampler_pid"
        [[ -s $peak ]] && record_mem peak-cache "$(cat "$peak")" "$(jq -r '"\(.samples) samples of summed VmRSS every 0.2 s"' "$peak")"
    fi
    if want https; then run_load https wrk "" "$LOAD_CPU" -- "${wrk_args[@]}" "$https/nostore"; fi
    if want h2; then
        run_load h2 h2load "" "$LOAD_CPU" -- -t1 -c16 -m10 -D "$DUR" --connect-to="127.0.0.1:$HTTPS_PORT" \
            "https://bench.test:$HTTPS_PORT/nostore"
    fi
    if want handshake; then
        run_load handshake-ecdsa wrk "" "$LOAD_CPU" -- -t1 -c"$HS_CONNS" -d"${HS_DUR}s" --latency \
            -s "$HERE/connect-to.lua" -H 'Connection: close' "$https/nostore"
    fi
    sleep 1
    record_mem idle-after-load "$(tools mem $(side_pids))"
    if want memory; then
        local m
        # shellcheck disable=SC2046
        m=$(tools idle-conns --port "$HTTP_PORT" --n "$IDLE_CONNS" $(side_pids))
        record_mem idle-1k-http "$m" "$(jq -r '"\(.open_at_measure) of \(.opened) open, \(.failed) failed"' <<<"$m")"
        # shellcheck disable=SC2046
        m=$(tools idle-conns --tls --port "$HTTPS_PORT" --n "$IDLE_CONNS" $(side_pids))
        record_mem idle-1k-tls "$m" "$(jq -r '"\(.open_at_measure) of \(.opened) open, \(.failed) failed"' <<<"$m")"
    fi
    stop_pid "$PROXY_PID"

    if want handshake; then
        start_side rsa
        run_load handshake-rsa wrk "" "$LOAD_CPU" -- -t1 -c"$HS_CONNS" -d"${HS_DUR}s" --latency \
            -s "$HERE/connect-to.lua" -H 'Connection: close' "$https/nostore"
        stop_pid "$PROXY_PID"
    fi
}

if [[ $WAIT_QUIET -gt 0 ]]; then
    log "waiting up to $WAIT_QUIET s for a quiet machine"
    note "wait-quiet: $(tools wait-quiet --max-seconds "$WAIT_QUIET")"
fi

# (g) the origin alone: the ceiling. The load generator moves to PROXY_CPU so the origin has core LOAD_CPU to itself.
if want origin; then
    SIDE=origin
    SIDE_ROOTS=("$ORIGIN_PID")
    run_load origin wrk "origin alone on CPU $LOAD_CPU, wrk on CPU $PROXY_CPU" "$PROXY_CPU" -- \
        -t1 -c"$CONNS" -d"${DUR}s" --latency "http://127.0.0.1:$ORIGIN_PORT/nostore"
fi

for ((ROUND = 1; ROUND <= REPEAT; ROUND++)); do
    for side in ${SIDES//,/ }; do
        case $side in
            edgepop | nginx) run_side "$side" ;;
            *) die "unknown side: $side" ;;
        esac
    done
done

# ------------------------------------------------------------------------------------------- report
note "proxy on CPU $PROXY_CPU, load generator + origin + unbound on CPU $LOAD_CPU; loadavg before $LOADAVG_START, after $(cut -d' ' -f1-3 /proc/loadavg)"
note "nginx upstream: $NGINX_DNS ($([[ $NGINX_DNS == static ]] && echo 'upstream block, keepalive 64, address fixed at start-up; unbound idle' || echo 'proxy_pass via variable, resolved through unbound, no upstream keepalive'))"
note "both sides log nothing (nginx access_log off, edgepop [access-log] format = \"off\")"
jq -n --arg date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" --arg command "$COMMAND_LINE" --arg nproc "$(nproc)" \
    --arg cpu "$CPU_MODEL" --arg kernel "$(uname -sr)" --arg governor "$GOVERNOR" --arg nginx "$NGINX_VERSION" \
    --arg edgepop "$EDGEPOP_VERSION" --arg git "$GIT_REV" --arg variant "$EDGEPOP_VARIANT" \
    --argjson duration "$DUR" --argjson handshake_duration "$HS_DUR" --argjson connections "$CONNS" \
    --argjson rounds "$REPEAT" --arg proxy_cpu "$PROXY_CPU" --arg load_cpu "$LOAD_CPU" \
    --rawfile notes "$NOTES" \
    '{date: $date, command: $command, nproc: $nproc, cpu: $cpu, kernel: $kernel, governor: $governor,
      nginx: $nginx, edgepop: $edgepop, git: $git, edgepop_config: $variant, duration_s: $duration,
      handshake_duration_s: $handshake_duration, connections: $connections, rounds: $rounds,
      proxy_cpu: $proxy_cpu, load_cpu: $load_cpu, notes: ($notes | split("\n") | map(select(. != "")) | unique)}' \
    >"$RUN_DIR/meta.json"
OUT_JSON="$RESULTS_DIR/$STAMP.json"
echo
echo "== results ($COMMAND_LINE, $(date -u '+%Y-%m-%d %H:%M UTC'))"
tools report --results "$RESULTS" --meta "$RUN_DIR/meta.json" --json "$OUT_JSON"
echo
echo "JSON: $OUT_JSON"
