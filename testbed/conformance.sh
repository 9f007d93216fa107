#!/usr/bin/env bash
# Runs veil's conformance suite (the `conformance` test target of the veil-tests crate)
# inside the software-protected testbed VM, on each testbed kernel, together with each
# kernel's own guest_memfd and memory-attribute selftests (lib.sh lists them): the
# upstream reference beside veil's port of their scenarios. It ends with one line per
# kernel, one for each kernel's selftests, and a last line with the sums of all of them:
#
#   conformance (Linux 6.12): <N> passed, <M> failed
#   selftests (Linux 6.12): <N> passed, <M> failed
#   conformance (Linux 7.3): <N> passed, <M> failed
#   selftests (Linux 7.3): <N> passed, <M> failed
#   conformance: <N> passed, <M> failed
#
# counting individual tests (a selftest command line counts as one; one that skips
# counts as failed: the testbed has everything they need). A test that never reported
# (because the VM crashed or timed out while it ran) counts as failed. Each kernel runs
# in VMs of its own and is checked to be the kernel the VM booted, so one kernel's
# results are never reported as another's.
#
# Usage: testbed/conformance.sh [--kernel NAME]... [TEST-FILTER...]
# --kernel picks a testbed kernel (6.12, 7.3, or all; repeatable); without it every
# kernel runs. Filters and other arguments go to the test binary (libtest's own options
# work); with a filter the selftests do not run.
#
# Exit status: 0 when every test passed on every kernel and the testbed reported no
# trouble (guest kernel warnings included); otherwise the worst of: 1 a test failed;
# 122 a guest kernel warned; 125 a test program never reported; 124 one timed out;
# 123 a kernel did not boot; 118 a VM booted another kernel than the one asked for;
# 121 the test binary could not be built; 119 a kernel did not build; 120 a package
# was missing; 2 usage. Every message names the kernel it concerns.
#
# The first run builds the testbed kernels (minutes each, cached afterwards) and
# installs the Debian packages they need; the test binary is built statically into
# target/testbed so the normal target directory is left alone. The knobs of run.sh and
# build-kernel.sh (VEIL_TESTBED_*) apply.
set -euo pipefail
SCRIPT_NAME=conformance
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
repo=$(cd "$TESTBED_DIR/.." && pwd)
cd "$repo"
started=$SECONDS

parse_kernels "$@" || exit 2
set -- ${REST[@]+"${REST[@]}"}
declare -A IMAGE=() KERNEL_STATUS=()
kernel_images "${KERNELS[@]}"
kernel_done=$SECONDS

# A static binary runs from the initramfs, which has no C library.
say "building the conformance tests (static, x86_64-unknown-linux-gnu, target/testbed)"
binary=$(build_static_tests --test conformance | tail -n1) || true
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
    say "building the conformance test binary failed"
    exit "$EXIT_SETUP"
fi
if readelf -lW "$binary" 2>/dev/null | grep -q 'program interpreter'; then
    say "warning: $binary is dynamically linked"
fi
built=$SECONDS

if [ -z "$("$binary" --list --format terse "$@" | sed -n 's/: test$//p')" ]; then
    say "no test matches: $*"
    echo "conformance: 0 passed, 0 failed"
    exit 1
fi

# run_selftests KERNEL-IMAGE: runs the selected kernel's selftests in one VM; sets
# ST_PASSED, ST_FAILED and ST_OUTCOME.
run_selftests() {
    local image=$1 dir files=() log status run line found rc secs command
    dir=$(dirname "$image")/selftests
    ST_PASSED=0 ST_FAILED=0 ST_OUTCOME=0
    files=("$dir"/*)
    [ -e "${files[0]}" ] || {
        say "no selftests in $dir"
        ST_FAILED=${#KERNEL_SELFTEST_RUNS[@]}
        ST_OUTCOME=$EXIT_SETUP
        return
    }
    log=$(mktemp "${TMPDIR:-/tmp}/veil-testbed-selftests.XXXXXX")
    say "running Linux $KERNEL_NAME's own selftests: ${KERNEL_SELFTEST_RUNS[*]}"
    set +e
    VEIL_TESTBED_KERNEL=$image VEIL_TESTBED_KERNEL_NAME=$KERNEL_NAME \
        VEIL_TESTBED_FILES="${files[*]}" \
        "$TESTBED_DIR/run.sh" "$TESTBED_DIR/selftests-guest.sh" "${KERNEL_SELFTEST_RUNS[@]}" |
        tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    case $status in
        0) ;;
        "$EXIT_WARNING" | "$EXIT_BOOT" | "$EXIT_TIMEOUT" | "$EXIT_CRASH" | \
            "$EXIT_WRONG_KERNEL" | "$EXIT_SETUP" | "$EXIT_KERNEL_BUILD" | "$EXIT_PACKAGE")
            ST_OUTCOME=$status
            ;;
        *) ST_OUTCOME=$EXIT_CRASH ;;
    esac
    for run in "${KERNEL_SELFTEST_RUNS[@]}"; do
        found=
        while read -r _ rc secs command; do
            if [ "$command" = "$run" ]; then
                found=$rc
                break
            fi
        done < <(grep '^@@selftest@@ ' "$log" || true)
        case $found in
            0)
                ST_PASSED=$((ST_PASSED + 1))
                say "selftest passed on Linux $KERNEL_NAME: $run (${secs} s)"
                ;;
            "")
                ST_FAILED=$((ST_FAILED + 1))
                ST_OUTCOME=$(worse "$ST_OUTCOME" "$EXIT_CRASH")
                say "selftest never reported on Linux $KERNEL_NAME (counted as failed): $run"
                ;;
            4)
                ST_FAILED=$((ST_FAILED + 1))
                ST_OUTCOME=$(worse "$ST_OUTCOME" 1)
                say "selftest SKIPPED on Linux $KERNEL_NAME, where it should run (counted as failed): $run"
                ;;
            *)
                ST_FAILED=$((ST_FAILED + 1))
                ST_OUTCOME=$(worse "$ST_OUTCOME" 1)
                say "selftest FAILED on Linux $KERNEL_NAME with status $found: $run"
                ;;
        esac
    done
    rm -f "$log"
}

final=0 total_passed=0 total_failed=0
summary=()
for k in "${KERNELS[@]}"; do
    kernel_select "$k"
    SCRIPT_NAME="conformance[$k]"
    if ((KERNEL_STATUS[$k] != 0)); then
        final=$(worse "$final" "${KERNEL_STATUS[$k]}")
        summary+=("conformance (Linux $k): not run: $(describe "${KERNEL_STATUS[$k]}")")
        continue
    fi
    say "running the tests in the testbed VM on Linux $k"
    PASSED=0 FAILED=0 IGNORED=0 SKIPPED=0 UNREPORTED=0
    vm_started=$SECONDS
    run_counted "${IMAGE[$k]}" "$binary" "$@"
    final=$(worse "$final" "$OUTCOME")
    ((IGNORED == 0)) || say "$IGNORED ignored on Linux $k"
    summary+=("conformance (Linux $k): $PASSED passed, $FAILED failed")
    total_passed=$((total_passed + PASSED))
    total_failed=$((total_failed + FAILED))
    if ((${#KERNEL_SELFTESTS[@]})) && (($# == 0)); then
        run_selftests "${IMAGE[$k]}"
        final=$(worse "$final" "$ST_OUTCOME")
        summary+=("selftests (Linux $k): $ST_PASSED passed, $ST_FAILED failed")
        total_passed=$((total_passed + ST_PASSED))
        total_failed=$((total_failed + ST_FAILED))
    fi
    say "Linux $k: VM runs $((SECONDS - vm_started)) s"
done

SCRIPT_NAME=conformance
say "kernels $((kernel_done - started)) s, test build $((built - kernel_done)) s," \
    "total $((SECONDS - started)) s"
((final == 0)) || say "outcome: $(describe "$final") (status $final)"
printf '%s\n' "${summary[@]}"
echo "conformance: $total_passed passed, $total_failed failed"
exit "$final"
