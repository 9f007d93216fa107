#!/usr/bin/env bash
# `veil soak` in the software-protected testbed, on each testbed kernel: the guest's
# vCPUs convert random 4 KiB pages and 2 MiB blocks of their own areas with
# MAP_GPA_RANGE (`vmmcall`) for a bounded time, checking the contents the content policy
# promises after every conversion, while veil audits every page of the vCPU's area after
# every round (private pages refuse the host's read, shared ones hold what the policy
# says). It runs in the attributes flavor (software-protected VMs, contents discarded)
# on every kernel, and in the in-place flavor (contents preserved) where the kernel runs
# it (7.3), each in a VM of its own, and prints veil's soak line for each:
#
#   testbed-soak (Linux 6.12, attributes flavor, 4 vCPUs, 60 s): soak: N conversions, M mismatches
#
# and last the sum over all of them, `soak: N conversions, M mismatches`.
#
# Usage: testbed/soak.sh [--kernel NAME]... [--flavor F]... [--seconds N] [--vcpus N]
#                        [--seed S]
#
#   --seconds N  how long each soak converts (default 60)
#   --vcpus N    the guest's vCPUs, 2 to 4 (default 4)
#   --flavor F   only flavor F (attributes or in-place; repeatable), on the kernels
#                that run it
#   --seed S     the seed of the guest's choices (default: veil takes one from the
#                clock and prints it; the same seed makes the same choices)
#
# The testbed VM gets VEIL_TESTBED_CPUS CPUs (default 2, so that veil's vCPU threads
# are spread over more than one CPU; QEMU runs them in one thread either way) and the
# program VEIL_TESTBED_TIMEOUT seconds (default: the soak's time and 300 more).
#
# Exits 0 when every soak passed; 1 when one failed (a mismatch, no conversion, a
# failed request or check: veil exits with 4, or another of its own failures);
# otherwise with the worst of run.sh's statuses (docs/testbed.md); 2 on bad usage.
set -euo pipefail
SCRIPT_NAME=testbed-soak
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TESTBED_DIR/.."
started=$SECONDS

usage="usage: testbed/soak.sh [--kernel NAME]... [--flavor F]... [--seconds N] [--vcpus N] [--seed S]"
parse_kernels "$@" || exit 2
set -- ${REST[@]+"${REST[@]}"}
seconds=60 vcpus=4 seed= flavors=()
while (($#)); do
    case $1 in
        --seconds)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || {
                say "--seconds needs a number of seconds"
                exit 2
            }
            seconds=$2
            shift 2
            ;;
        --vcpus)
            [[ ${2:-} =~ ^[2-4]$ ]] || {
                say "--vcpus needs 2, 3 or 4"
                exit 2
            }
            vcpus=$2
            shift 2
            ;;
        --flavor)
            case ${2:-} in
                attributes | in-place) flavors+=("$2") ;;
                *)
                    say "--flavor needs attributes or in-place"
                    exit 2
                    ;;
            esac
            shift 2
            ;;
        --seed)
            [[ ${2:-} =~ ^[0-9]+$ ]] || {
                say "--seed needs a number"
                exit 2
            }
            seed=$2
            shift 2
            ;;
        *)
            say "unknown argument $1 ($usage)"
            exit 2
            ;;
    esac
done

# flavors_for KERNEL: the flavors the soak runs on KERNEL, of those asked for.
flavors_for() {
    local f runs=(attributes)
    [ "$1" = 6.12 ] || runs+=(in-place)
    for f in "${runs[@]}"; do
        if ((${#flavors[@]} == 0)) || [[ " ${flavors[*]} " == *" $f "* ]]; then
            echo "$f"
        fi
    done
}

# describe_veil STATUS: what veil's exit status means (cli/src/failure.rs), or run.sh's.
describe_veil() {
    case $1 in
        1) echo "veil exited with 1: KVM or the VM failed" ;;
        3) echo "veil exited with 3: the host lacks what the soak needs" ;;
        4) echo "veil exited with 4: the soak failed a check" ;;
        5) echo "veil exited with 5: a thread broke its seccomp filter" ;;
        *) describe "$1" ;;
    esac
}

declare -A IMAGE=() KERNEL_STATUS=()
kernel_images "${KERNELS[@]}"
# A release build, as users run it: the host's audits go faster.
prepare_veil soak

final=0 summary=() total_n=0 total_m=0
for k in "${KERNELS[@]}"; do
    kernel_select "$k"
    if ((KERNEL_STATUS[$k] != 0)); then
        final=$(worse "$final" "${KERNEL_STATUS[$k]}")
        summary+=("testbed-soak (Linux $k): not run: $(describe "${KERNEL_STATUS[$k]}")")
        continue
    fi
    mapfile -t runs < <(flavors_for "$k")
    if ((${#runs[@]} == 0)); then
        summary+=("testbed-soak (Linux $k): not run: none of the flavors asked for runs here")
        continue
    fi
    for flavor in "${runs[@]}"; do
        label="Linux $k, $flavor flavor, $vcpus vCPUs, $seconds s"
        out=$work/soak-$k-$flavor
        args=(soak --seconds "$seconds" --vcpus "$vcpus" --flavor "$flavor")
        [ -z "$seed" ] || args+=(--seed "$seed")
        say "veil ${args[*]} on Linux $k"
        set +e
        VEIL_TESTBED_KERNEL=${IMAGE[$k]} VEIL_TESTBED_KERNEL_NAME=$k \
            VEIL_TESTBED_CPUS=${VEIL_TESTBED_CPUS:-2} \
            VEIL_TESTBED_TIMEOUT=${VEIL_TESTBED_TIMEOUT:-$((seconds + 300))} \
            "$TESTBED_DIR/run.sh" "$veil" "${args[@]}" 2>&1 | tee "$out" >&2
        status=${PIPESTATUS[0]}
        set -e
        line=$(grep -E '^soak: [0-9]+ conversions, [0-9]+ mismatches$' "$out" | tail -n1 || true)
        case $status in
            0) ;;
            "$EXIT_WARNING" | "$EXIT_BOOT" | "$EXIT_TIMEOUT" | "$EXIT_CRASH" | \
                "$EXIT_WRONG_KERNEL" | "$EXIT_SETUP" | "$EXIT_KERNEL_BUILD" | "$EXIT_PACKAGE")
                final=$(worse "$final" "$status")
                ;;
            *) final=$(worse "$final" 1) ;;
        esac
        if [ -n "$line" ]; then
            read -r n m < <(sed -E 's/^soak: ([0-9]+) conversions, ([0-9]+) mismatches$/\1 \2/' <<<"$line")
            total_n=$((total_n + n)) total_m=$((total_m + m))
        fi
        if ((status == 0)) && [ -n "$line" ]; then
            summary+=("testbed-soak ($label): $line")
        elif [ -n "$line" ]; then
            summary+=("testbed-soak ($label): $line; FAILED: $(describe_veil "$status")")
        else
            summary+=("testbed-soak ($label): no soak line; FAILED: $(describe_veil "$status")")
        fi
    done
done

say "total $((SECONDS - started)) s"
printf '%s\n' "${summary[@]}"
echo "soak: $total_n conversions, $total_m mismatches"
exit "$final"
