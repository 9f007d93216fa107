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

# A static binary runs from the initramfs, which has no C library.
say "building the conformance tests (static, x86_64-unknown-linux-gnu, target/testbed)"
binary=$(build_static_tests --test conformance | tail -n1) || true
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
    say "building the conformance test binary failed"
    exit "$EXIT_SETUP"
fi
file_type=$(file -b "$binary" 2>/dev/null || true)
case $file_type in
    *dynamically*) say "warning: $binary is dynamically linked ($file_type)" ;;
esac
built=$SECONDS

if [ -z "$("$binary" --list --format terse "$@" | sed -n 's/: test$//p')" ]; then
    say "no test matches: $*"
    echo "conformance: 0 passed, 0 failed"
    exit 1
fi

say "running the tests in the testbed VM"
status=0
run_counted "$kernel" "$binary" "$@" || status=$?

say "kernel $((kernel_done - started)) s, test build $((built - kernel_done)) s," \
    "VM run $((SECONDS - built)) s, total $((SECONDS - started)) s"
((IGNORED == 0)) || say "$IGNORED ignored"
echo "conformance: $PASSED passed, $FAILED failed"
if ((FAILED > 0 || (status != 0 && status != 101))); then
    exit 1
fi
