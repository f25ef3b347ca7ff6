#!/usr/bin/env bash
# Runs the cargo-fuzz targets for a bounded time each, one after the other (libFuzzer, nightly, AddressSanitizer).
# By hand, not in .ci/run: the sanitizer build of pingora takes 10-20 minutes on our 2-core machines, and CI's
# machine may not have a nightly toolchain. See README.md.
#
#   fuzz/run.sh                      # every target, 60 s each
#   fuzz/run.sh -t 300 config        # one target, 5 minutes
#
# New inputs go to target/corpus/<target>/ (kept between runs, not committed), crashes to artifacts/<target>/.
# Prints executions/s, coverage and corpus size per target; exits 1 if any target found a crash, timeout or OOM.
set -euo pipefail
cd "$(dirname "$0")"

seconds=60
while getopts "t:h" opt; do
    case $opt in
        t) seconds=$OPTARG ;;
        *) sed -n '2,10p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
targets=("$@")
((${#targets[@]})) || targets=(config proxy_header cache_entry cert_pair)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: needs a nightly toolchain (cargo +nightly)" >&2
    exit 2
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# The workspace's dependency versions (cargo adds libfuzzer-sys and drops what the targets do not use).
cp ../Cargo.lock Cargo.lock

# One build for all targets (the same flags as `cargo fuzz run`: release, debug assertions, ASan).
nice -n 10 cargo +nightly fuzz build

failed=()
for t in "${targets[@]}"; do
    mkdir -p "target/corpus/$t"
    log="target/fuzz-$t.log"
    # -timeout: cert_pair writes files; anything slower than 10 s per input is a bug worth an artifact.
    if nice -n 10 cargo +nightly fuzz run "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        verdict=ok
    else
        verdict="FAILED (see $log and artifacts/$t/)"
        failed+=("$t")
    fi
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: //p' "$log")
    stats=$(sed -E 's/^#[0-9]+[[:space:]]+DONE[[:space:]]+//' <<<"$done_line")
    printf '%-13s %s execs=%s  %s\n' "$t" "$verdict" "${execs:-?}" "$stats"
done
((${#failed[@]} == 0))
