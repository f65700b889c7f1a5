#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo-fuzz, libFuzzer with AddressSanitizer)
# one after the other, each for SECONDS (default 60); all targets when none is named. Not
# part of CI, which only builds the targets and runs them over their seeds (scripts/test.sh).
#   scripts/fuzz.sh [SECONDS] [TARGET...]      e.g. scripts/fuzz.sh 300 resp_codec
# Installs cargo-fuzz when it is missing. cargo fuzz needs nightly's flags: it uses a nightly
# toolchain when rustup has one, else the stable one with RUSTC_BOOTSTRAP=1.
# Each target's corpus grows in fuzz/corpus/<target> (git-ignored), starting from the seeds in
# fuzz/seeds/<target>; a crashing input is written to fuzz/artifacts/<target>/, and the run's
# log to fuzz/artifacts/<target>.log. Prints per target the executions run and whether it
# crashed; exits 1 if any target crashed. Keep a crash as a regression test (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
if ! [[ $secs =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
fuzz=(cargo fuzz)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
fi

cd fuzz
if (($# == 0)); then
    mapfile -t targets < <("${fuzz[@]}" list)
else
    targets=("$@")
fi

echo "==> building ${targets[*]}"
for t in "${targets[@]}"; do
    "${fuzz[@]}" build "$t"
done

crashed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    # Beside the target's artifacts, not among them: cargo fuzz reports the newest file there
    # as the crashing input.
    log="artifacts/$t.log"
    echo "==> $t for ${secs}s (log: fuzz/$log)"
    rc=0
    "${fuzz[@]}" run "$t" -- -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    execs=$(awk '/stat::number_of_executed_units/ {n = $2} END {print n + 0}' "$log")
    if ((rc == 0)); then
        result="no crash"
    else
        result="CRASH (exit $rc): $(grep -m1 -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY)' "$log" || echo "see the log")"
        crashed+=("$t")
        tail -n 30 "$log"
    fi
    summary+=("$(printf '%-12s %12s executions in %ss: %s' "$t" "$execs" "$secs" "$result")")
done

echo "==> summary"
printf '%s\n' "${summary[@]}"
if ((${#crashed[@]})); then
    echo "crashed: ${crashed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
