#!/usr/bin/env bash
# Runs veil's conformance suite (the `conformance` test target of the veil-tests crate)
# inside the software-protected testbed VM, and ends with the line
#
#   conformance: <N> passed, <M> failed
#
# counting individual tests. A test that never reported (because the VM crashed or
# timed out while it ran) counts as failed. Exit status: 0 when every test passed and
# the testbed reported no trouble (guest kernel warnings included), 1 when a test
# failed or did not run, 121 when the kernel or the test binary could not be built.
#
# Usage: testbed/conformance.sh [TEST-FILTER...]
# Filters and other arguments go to the test binary (libtest's own options work).
# The first run builds the testbed kernel (a few minutes, cached afterwards) and
# installs the Debian packages it needs; the test binary is built statically into
# target/testbed so the normal target directory is left alone. The knobs of run.sh
# (VEIL_TESTBED_*) apply.
set -euo pipefail
SCRIPT_NAME=conformance
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
repo=$(cd "$TESTBED_DIR/.." && pwd)
cd "$repo"
started=$SECONDS

kernel=$("$TESTBED_DIR/build-kernel.sh") || exit "$EXIT_SETUP"
kernel_done=$SECONDS

# A static binary runs from the initramfs, which has no C library. The explicit
# --target keeps crt-static away from build scripts and proc-macros.
target=x86_64-unknown-linux-gnu
say "building the conformance tests (static, $target, target/testbed)"
binary=$(RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo test --locked -p veil-tests --test conformance --target "$target" \
    --target-dir "$repo/target/testbed" --no-run --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1) || true
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
    say "building the conformance test binary failed"
    exit "$EXIT_SETUP"
fi
file_type=$(file -b "$binary" 2>/dev/null || true)
case $file_type in
    *dynamically*) say "warning: $binary is dynamically linked ($file_type)" ;;
esac
built=$SECONDS

# The tests the binary holds, asked on the host (listing needs no KVM); those not
# reported back from the VM count as failed.
mapfile -t all < <("$binary" --list --format terse "$@" | sed -n 's/: test$//p')
if ((${#all[@]} == 0)); then
    say "no test matches: $*"
    echo "conformance: 0 passed, 0 failed"
    exit 1
fi

say "running ${#all[@]} tests in the testbed VM"
log=$(mktemp "${TMPDIR:-/tmp}/veil-conformance.XXXXXX")
trap 'rm -f "$log"' EXIT
set +e
VEIL_TESTBED_KERNEL=$kernel "$TESTBED_DIR/run.sh" "$binary" --color never "$@" | tee "$log"
status=${PIPESTATUS[0]}
set -e

declare -A result=()
while read -r _ name _ outcome _; do
    # An ignored test with a reason reads "ignored, <reason>".
    result[$name]=${outcome%,}
done < <(grep -E '^test [^ ]+ \.\.\. (ok|FAILED|ignored)' "$log" || true)
passed=0 failed=0 ignored=0 missing=()
for name in "${all[@]}"; do
    case ${result[$name]:-} in
        ok) passed=$((passed + 1)) ;;
        ignored) ignored=$((ignored + 1)) ;;
        FAILED) failed=$((failed + 1)) ;;
        *)
            failed=$((failed + 1))
            missing+=("$name")
            ;;
    esac
done

say "kernel $((kernel_done - started)) s, test build $((built - kernel_done)) s," \
    "VM run $((SECONDS - built)) s, total $((SECONDS - started)) s"
((${#missing[@]} == 0)) || say "never reported (counted as failed): ${missing[*]}"
((ignored == 0)) || say "$ignored ignored"
case $status in
    0 | 101) ;; # libtest's own verdicts; the counts say which
    *) say "the testbed run ended with status $status (see above)" ;;
esac
echo "conformance: $passed passed, $failed failed"
if ((failed > 0 || status != 0)); then
    exit 1
fi
