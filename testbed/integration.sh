#!/usr/bin/env bash
# Runs veil's integration tests (every test target of the veil-tests crate but the
# conformance suite) inside the software-protected testbed VM, one VM per test binary,
# and ends with the line
#
#   testbed-integration: <N> passed, <M> failed
#
# These tests are written for any KVM; here they meet a standard KVM (AMD SVM with
# nested paging, Linux 6.12) instead of the host's own, which catches what one KVM
# accepts and another refuses. Tests that need what the testbed lacks (guest_memfd that
# the host can map, for the in-place flavor) skip with their printed reason.
#
# Exit status: 0 when every test passed and the testbed reported no trouble, 1 when a
# test failed or did not run, 121 when the kernel or the test binaries could not be
# built. Usage: testbed/integration.sh [TEST-FILTER...]
set -euo pipefail
SCRIPT_NAME=testbed-integration
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TESTBED_DIR/.."
started=$SECONDS

kernel=$("$TESTBED_DIR/build-kernel.sh") || exit "$EXIT_SETUP"
say "building the integration tests (static, x86_64-unknown-linux-gnu, target/testbed)"
mapfile -t binaries < <(build_static_tests --tests | grep -v '/conformance-') || true
if ((${#binaries[@]} == 0)); then
    say "building the integration test binaries failed"
    exit "$EXIT_SETUP"
fi
built=$SECONDS

trouble=0
for binary in "${binaries[@]}"; do
    say "running $(basename "$binary")"
    status=0
    run_counted "$kernel" "$binary" "$@" || status=$?
    case $status in 0 | 101) ;; *) trouble=1 ;; esac
done

say "${#binaries[@]} test binaries; build $((built - started)) s," \
    "VM runs $((SECONDS - built)) s, total $((SECONDS - started)) s"
((IGNORED == 0)) || say "$IGNORED ignored"
((SKIPPED == 0)) || say "$SKIPPED of the passed tests skipped, each with its reason above"
echo "testbed-integration: $PASSED passed, $FAILED failed"
if ((FAILED > 0 || trouble)); then
    exit 1
fi
