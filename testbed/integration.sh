#!/usr/bin/env bash
# Runs veil's integration tests (every test target of the veil-tests crate but the
# conformance suite) inside the software-protected testbed VM on each testbed kernel,
# one VM per test binary, and ends with one line per kernel and a last line with the
# sums:
#
#   testbed-integration (Linux 6.12): <N> passed, <M> failed
#   testbed-integration (Linux 7.3): <N> passed, <M> failed
#   testbed-integration: <N> passed, <M> failed
#
# These tests are written for any KVM; here they meet standard KVMs (AMD SVM with
# nested paging, Linux 6.12 and 7.3) instead of the host's own, which catches what one
# KVM accepts and another refuses. Tests that need what a kernel lacks (guest_memfd
# that the host can map, for the in-place flavor, on 6.12) skip with their printed
# reason; on 7.3 they must run (VEIL_REQUIRE_IN_PLACE=1, see lib.sh). Where
# VEIL_DEBIAN_KERNEL names a file (.ci/run sets it), it is copied into the VM of
# veil-loader's distribution-kernel tests, which must then find it. Before the
# tests, `veil caps --json` runs on each kernel; its report is printed and kept in
# target/testbed/caps-<kernel>.json.
#
# Usage: testbed/integration.sh [--kernel NAME]... [TEST-FILTER...]
# --kernel picks a testbed kernel (6.12, 7.3, or all; repeatable); without it every
# kernel runs.
#
# Exit status: 0 when every test passed on every kernel and the testbed reported no
# trouble; otherwise the worst outcome, with the statuses of conformance.sh (1 a test
# failed, 122 a guest kernel warned, 125 a test program never reported, 124 timeout,
# 123 no boot, 118 wrong kernel, 121 the test binaries could not be built, 119 a kernel
# did not build, 120 a package was missing, 2 usage).
set -euo pipefail
SCRIPT_NAME=testbed-integration
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TESTBED_DIR/.."
started=$SECONDS

parse_kernels "$@" || exit 2
set -- ${REST[@]+"${REST[@]}"}
declare -A IMAGE=() KERNEL_STATUS=()
kernel_images "${KERNELS[@]}"

say "building the integration tests and veil (static, x86_64-unknown-linux-gnu, target/testbed)"
mapfile -t binaries < <(build_static_tests --tests | grep -v '/conformance-') || true
if ((${#binaries[@]} == 0)); then
    say "building the integration test binaries failed"
    exit "$EXIT_SETUP"
fi
veil=$(build_static_veil) || true
if [ -z "$veil" ] || [ ! -x "$veil" ]; then
    say "building the veil binary failed"
    exit "$EXIT_SETUP"
fi
built=$SECONDS

final=0 total_passed=0 total_failed=0
summary=()
for k in "${KERNELS[@]}"; do
    kernel_select "$k"
    SCRIPT_NAME="testbed-integration[$k]"
    if ((KERNEL_STATUS[$k] != 0)); then
        final=$(worse "$final" "${KERNEL_STATUS[$k]}")
        summary+=("testbed-integration (Linux $k): not run: $(describe "${KERNEL_STATUS[$k]}")")
        continue
    fi
    vm_started=$SECONDS
    caps=target/testbed/caps-$k.json
    say "veil caps --json on Linux $k (kept in $caps)"
    status=0
    VEIL_TESTBED_KERNEL=${IMAGE[$k]} VEIL_TESTBED_KERNEL_NAME=$k \
        "$TESTBED_DIR/run.sh" "$veil" caps --json >"$caps.new" || status=$?
    cat "$caps.new"
    if ((status == 0)); then
        mv "$caps.new" "$caps"
    else
        say "veil caps failed on Linux $k: $(describe "$status") (status $status)"
        final=$(worse "$final" "$(worse 1 "$status")")
    fi

    PASSED=0 FAILED=0 IGNORED=0 SKIPPED=0 UNREPORTED=0
    for binary in "${binaries[@]}"; do
        say "running $(basename "$binary") on Linux $k"
        if [[ $(basename "$binary") == loader_debian_kernel-* ]] &&
            [ -f "${VEIL_DEBIAN_KERNEL:-}" ]; then
            # The distribution kernel veil-loader's tests place (.ci/run fetches it)
            # goes into the VM beside them, and there they must find it.
            VEIL_TESTBED_FILES="${VEIL_TESTBED_FILES:-} $VEIL_DEBIAN_KERNEL" \
                VEIL_TESTBED_ENV="${VEIL_TESTBED_ENV:-} VEIL_REQUIRE_FIXTURES=1
                VEIL_DEBIAN_KERNEL=/test/$(basename "$VEIL_DEBIAN_KERNEL")" \
                run_counted "${IMAGE[$k]}" "$binary" "$@"
        else
            run_counted "${IMAGE[$k]}" "$binary" "$@"
        fi
        final=$(worse "$final" "$OUTCOME")
    done
    say "Linux $k: ${#binaries[@]} test binaries, VM runs $((SECONDS - vm_started)) s"
    ((IGNORED == 0)) || say "$IGNORED ignored on Linux $k"
    ((SKIPPED == 0)) || say "$SKIPPED of the passed tests skipped on Linux $k, each with its reason above"
    summary+=("testbed-integration (Linux $k): $PASSED passed, $FAILED failed")
    total_passed=$((total_passed + PASSED))
    total_failed=$((total_failed + FAILED))
done

SCRIPT_NAME=testbed-integration
say "build $((built - started)) s, total $((SECONDS - started)) s"
((final == 0)) || say "outcome: $(describe "$final") (status $final)"
printf '%s\n' "${summary[@]}"
echo "testbed-integration: $total_passed passed, $total_failed failed"
exit "$final"
