#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target in fuzz/ and runs each over its committed seeds
# and then for FUZZ_SECONDS of fuzzing; fails if any target crashes, hangs or runs out of memory.
# A failing input is kept in fuzz/artifacts/<target>/ (see the README's Fuzzing section for
# turning it into a regression test).
#
#   FUZZ_SECONDS=N       fuzzing time per target, after its seeds (default 20)
#   FUZZ_JOBS=N          targets run at once (default 2: the CI machine has 2 cores)
#   FUZZ_TARGETS="a b"   only these targets (default: all, `cargo fuzz list`)
#
# Installs cargo-fuzz when it is missing. The sanitizer and coverage flags need a nightly
# compiler: rustup's nightly toolchain if it is installed, else the active one with
# RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
jobs=${FUZZ_JOBS:-2}

if ! command -v cargo-fuzz >/dev/null; then
    cargo install --locked cargo-fuzz
fi
if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    # cargo-fuzz takes any compiler as nightly when RUSTC_BOOTSTRAP is set.
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi

started=$SECONDS
"${fuzz[@]}" build
echo "fuzz-smoke: built in $((SECONDS - started)) s"

# `sim` spends about 20 s on its seeds alone (each simulates minutes of a deployment): it goes
# first so that the others run beside it.
targets=()
for target in ${FUZZ_TARGETS:-$("${fuzz[@]}" list)}; do
    if [[ $target == sim ]]; then
        targets=(sim "${targets[@]}")
    else
        targets+=("$target")
    fi
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

smoke() {
    local target=$1 began=$SECONDS
    mkdir -p "$scratch/$target"
    # New inputs go to the scratch directory (the first one given), so the committed seeds
    # stay as they are. A single input may take 40 s (`sim`): more than 300 s is a hang.
    if "${fuzz[@]}" run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=300 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1; then
        echo ok >"$scratch/$target.status"
    else
        echo failed >"$scratch/$target.status"
    fi
    echo $((SECONDS - began)) >"$scratch/$target.seconds"
}

running=0
for target in "${targets[@]}"; do
    smoke "$target" &
    running=$((running + 1))
    if ((running >= jobs)); then
        wait -n
        running=$((running - 1))
    fi
done
wait

failed=()
for target in "${targets[@]}"; do
    log=$scratch/$target.log
    runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    status=$(cat "$scratch/$target.status" 2>/dev/null || echo failed)
    echo "fuzz-smoke: $target: $status, ${runs:-?} runs in $(cat "$scratch/$target.seconds") s"
    if [[ $status != ok ]]; then
        failed+=("$target")
        tail -n 60 "$log"
        echo "fuzz-smoke: $target: inputs kept in fuzz/artifacts/$target/"
    fi
done
echo "fuzz-smoke: $((SECONDS - started)) s in all"
if ((${#failed[@]})); then
    echo "fuzz-smoke: FAILED: ${failed[*]}"
    exit 1
fi
