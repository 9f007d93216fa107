#!/usr/bin/env bash
# Runs a statically linked x86-64 program inside the software-protected testbed VM and
# exits with the program's exit status.
#
# Usage: testbed/run.sh PROGRAM [ARGS...]
#
# The program is packed with busybox into an initramfs and booted with a testbed
# kernel (VEIL_TESTBED_KERNEL_NAME, built or found by build-kernel.sh) under QEMU's
# software emulation
# (-accel tcg -cpu max: AMD SVM with nested paging), so /dev/kvm inside the VM offers
# software-protected VMs whatever the host's own KVM can do. It works as cargo's test
# runner: CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=/path/to/testbed/run.sh.
#
# Inside the VM the program runs as root in /test with /proc, /sys, /dev and /tmp
# mounted, stdin empty, and only these variables from the host: RUST_BACKTRACE,
# RUST_LIB_BACKTRACE, RUST_LOG, RUST_TEST_THREADS, RUST_TEST_NOCAPTURE, RUST_MIN_STACK,
# plus VEIL_TESTBED=1, VEIL_TESTBED_KERNEL_NAME (the kernel's name), VEIL_REQUIRE_KVM=1
# and VEIL_REQUIRE_SWPROT=1 (a software-protected VM type must be there), the kernel's
# own requirements (lib.sh: VEIL_REQUIRE_IN_PLACE=1 on 7.3, whose guest_memfd the host
# can map) and whatever VEIL_TESTBED_ENV adds. Its stdout and
# stderr come back on stdout through a serial port of their own; the guest console
# (kernel log) is kept apart and shown only when something went wrong.
#
# Exit status:
#   the program's own  it ran to the end (128+N when signal N killed it)
#   2                  usage error
#   118                the guest booted another kernel than the one asked for
#   119                the kernel did not configure or build
#   120                a package was missing and could not be installed or fetched
#   121                the host side could not be prepared otherwise (QEMU, files)
#   122                the program passed but the guest kernel logged WARNING/BUG/Oops
#   123                the guest never reached its init (boot failure)
#   124                the program did not finish within VEIL_TESTBED_TIMEOUT
#   125                the guest ended while the program ran, without reporting a status
#
# Every message names the kernel.
#
# Knobs (environment):
#   VEIL_TESTBED_KERNEL_NAME   the testbed kernel: 6.12 (default) or 7.3 (lib.sh)
#   VEIL_TESTBED_KERNEL        bzImage to boot instead of running build-kernel.sh; the
#                              guest's release is then checked against
#                              VEIL_TESTBED_KERNEL_NAME only when that is set too
#   VEIL_TESTBED_TIMEOUT       seconds the program may run (default 900)
#   VEIL_TESTBED_BOOT_TIMEOUT  seconds the guest may take to reach init (default 120)
#   VEIL_TESTBED_CPU           QEMU CPU model (default max; it must have svm and npt)
#   VEIL_TESTBED_TCG_THREADS   QEMU's TCG threading: single (default) or multi; with
#                              multi, guests converting memory on two vCPUs at once
#                              sometimes crashed (see docs/testbed.md)
#   VEIL_TESTBED_CPUS          guest CPUs (default 2)
#   VEIL_TESTBED_MEMORY        guest memory (default 1G)
#   VEIL_TESTBED_APPEND        extra guest kernel command line
#   VEIL_TESTBED_ENV           NAME=VALUE words exported to the program
#   VEIL_TESTBED_FILES         extra files copied beside the program into /test
#   VEIL_TESTBED_CONSOLE=1     also show the guest console on stderr, as it comes
#   VEIL_TESTBED_LOG           keep the guest console log at this path
#   VEIL_TESTBED_ALLOW_WARNINGS=1  report guest kernel warnings but keep the status
set -uo pipefail
SCRIPT_NAME=testbed
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
kernel_name=${VEIL_TESTBED_KERNEL_NAME:-}
kernel_select "${kernel_name:-${TESTBED_KERNELS[0]}}" || exit 2
# What messages call the kernel: its name, or the image given without one.
label="Linux $KERNEL_NAME"
if [ -n "${VEIL_TESTBED_KERNEL:-}" ] && [ -z "$kernel_name" ]; then
    label="the kernel $VEIL_TESTBED_KERNEL"
    SCRIPT_NAME=testbed
else
    SCRIPT_NAME="testbed[$KERNEL_NAME]"
fi

usage() {
    sed -n '2,/^set -uo/p' "$0" | sed -e '/^set -uo/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}
[ $# -ge 1 ] || usage
case $1 in -h | --help) usage ;; esac
program=$1
shift
[ -f "$program" ] || {
    say "no such program: $program"
    exit 2
}

timeout=${VEIL_TESTBED_TIMEOUT:-900}
boot_timeout=${VEIL_TESTBED_BOOT_TIMEOUT:-120}
for n in "$timeout" "$boot_timeout"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || {
        say "timeouts are whole seconds, got '$n'"
        exit 2
    }
done

ensure_packages "${VM_PACKAGES[@]}" || {
    say "the packages to boot $label are missing"
    exit "$EXIT_PACKAGE"
}
busybox=/bin/busybox
[ -x "$busybox" ] || {
    say "$busybox missing (Debian package busybox-static)"
    exit "$EXIT_PACKAGE"
}
kernel=${VEIL_TESTBED_KERNEL:-}
if [ -z "$kernel" ]; then
    kernel_name=$KERNEL_NAME
    kernel=$("$TESTBED_DIR/build-kernel.sh" "$KERNEL_NAME") || exit $?
fi
[ -f "$kernel" ] || {
    say "kernel image $kernel not found"
    exit "$EXIT_SETUP"
}

work=$(mktemp -d "${TMPDIR:-/tmp}/veil-testbed.XXXXXX") || exit "$EXIT_SETUP"
qemu_pid=
reader_pid=
cleanup() {
    [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null
    [ -n "$reader_pid" ] && kill "$reader_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the initramfs ---------------------------------------------------------------
# Single-quotes a word for the guest's shell.
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

name=$(basename "$program")
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,test} || exit "$EXIT_SETUP"
cp "$busybox" "$root/bin/busybox" && cp "$program" "$root/test/$name" &&
    chmod 755 "$root/test/$name" || exit "$EXIT_SETUP"
for f in ${VEIL_TESTBED_FILES:-}; do
    cp "$f" "$root/test/" || exit "$EXIT_SETUP"
done

exports="export VEIL_TESTBED=1 VEIL_REQUIRE_KVM=1 VEIL_REQUIRE_SWPROT=1"$'\n'
# An image given without a name is no known kernel: nothing is said or required of it.
if [ -n "$kernel_name" ]; then
    exports+="export VEIL_TESTBED_KERNEL_NAME=$(quote "$KERNEL_NAME")"$'\n'
    for kv in ${KERNEL_GUEST_ENV[@]+"${KERNEL_GUEST_ENV[@]}"}; do
        exports+="export ${kv%%=*}=$(quote "${kv#*=}")"$'\n'
    done
fi
for var in RUST_BACKTRACE RUST_LIB_BACKTRACE RUST_LOG RUST_TEST_THREADS RUST_TEST_NOCAPTURE \
    RUST_MIN_STACK; do
    [ -n "${!var+set}" ] && exports+="export $var=$(quote "${!var}")"$'\n'
done
for kv in ${VEIL_TESTBED_ENV:-}; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || {
        say "VEIL_TESTBED_ENV: '$kv' is not NAME=VALUE"
        exit 2
    }
    exports+="export ${kv%%=*}=$(quote "${kv#*=}")"$'\n'
done
command="./$(quote "$name")"
for arg in "$@"; do
    command+=" $(quote "$arg")"
done

# The markers the host looks for on the console; kept unlikely to appear otherwise.
marker=@@veil-testbed@@
cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo "$marker init \$(cut -d' ' -f1 /proc/uptime) \$(uname -r)"
# ttyS1 carries the program's output to the host byte for byte.
stty -F /dev/ttyS1 raw -echo
cd /test
$exports
# Through a pipe, so the program sees no terminal (libtest prints no colour codes).
{ $command </dev/null; echo \$? >/tmp/status; } 2>&1 | cat >/dev/ttyS1
echo "$marker status \$(cat /tmp/status) \$(cut -d' ' -f1 /proc/uptime)"
if dmesg | grep -qE 'WARNING:|BUG:|Oops'; then
    echo "$marker kernel-warnings"
    dmesg | grep -A 30 -E 'WARNING:|BUG:|Oops' | head -n 120
fi
# A reset ends QEMU (-no-reboot), with or without ACPI in the kernel.
reboot -f
EOF
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initramfs.cpio" || {
    say "packing the initramfs failed"
    exit "$EXIT_SETUP"
}

# --- the VM ----------------------------------------------------------------------
console=$work/console.log
program_out=$work/program.fifo
mkfifo "$program_out" || exit "$EXIT_SETUP"
: >"$console"
cat "$program_out" &
reader_pid=$!

# One TCG thread for all guest CPUs: with one thread per CPU (QEMU's default), nested
# guests converting memory on two vCPUs at once sometimes triple-faulted, or reset the
# whole testbed VM (docs/testbed.md, Limits).
qemu=(qemu-system-x86_64 -machine q35 -accel "tcg,thread=${VEIL_TESTBED_TCG_THREADS:-single}"
    -cpu "${VEIL_TESTBED_CPU:-max}"
    -smp "${VEIL_TESTBED_CPUS:-2}" -m "${VEIL_TESTBED_MEMORY:-1G}"
    -nodefaults -no-user-config -display none -monitor none -no-reboot
    -serial "file:$console" -serial "file:$program_out"
    -kernel "$kernel" -initrd "$work/initramfs.cpio"
    -append "console=ttyS0 panic=-1 quiet loglevel=4 ${VEIL_TESTBED_APPEND:-}")
command -v qemu-system-x86_64 >/dev/null || {
    say "qemu-system-x86_64 not found (Debian package qemu-system-x86)"
    exit "$EXIT_SETUP"
}
"${qemu[@]}" </dev/null >"$work/qemu.out" 2>&1 &
qemu_pid=$!

started=$SECONDS
init_at=
shown=0
outcome=
while kill -0 "$qemu_pid" 2>/dev/null; do
    sleep 0.2
    if [ "${VEIL_TESTBED_CONSOLE:-0}" = 1 ]; then
        tail -c +$((shown + 1)) "$console" | tr -d '\r' >&2
        shown=$(stat -c %s "$console")
    fi
    if [ -z "$init_at" ]; then
        if grep -q "^$marker init" "$console"; then
            init_at=$SECONDS
        elif ((SECONDS - started > boot_timeout)); then
            outcome=boot-timeout
            break
        fi
    elif ((SECONDS - init_at > timeout)) && ! grep -q "^$marker status" "$console"; then
        outcome=timeout
        break
    fi
done
if [ -n "$outcome" ]; then
    kill "$qemu_pid" 2>/dev/null
fi
wait "$qemu_pid"
qemu_status=$?
qemu_pid=
# If QEMU never opened the program's port, the reader still waits for a writer:
# opening the FIFO read-write (which never blocks) and closing it ends the wait.
exec 8<>"$program_out" && exec 8>&-
wait "$reader_pid"
reader_pid=

if [ "${VEIL_TESTBED_CONSOLE:-0}" = 1 ]; then
    tail -c +$((shown + 1)) "$console" | tr -d '\r' >&2
fi
if [ -n "${VEIL_TESTBED_LOG:-}" ]; then
    tr -d '\r' <"$console" >"$VEIL_TESTBED_LOG"
fi
show_console() {
    [ "${VEIL_TESTBED_CONSOLE:-0}" != 1 ] || return 0
    if [ -s "$console" ]; then
        say "last lines of the guest console:"
        tr -d '\r' <"$console" | grep -v "^$marker" | tail -n "${1:-40}" | sed 's/^/  | /' >&2
    else
        say "the guest console stayed empty"
    fi
}
status_line=$(tr -d '\r' <"$console" | grep -m1 "^$marker status ") || status_line=
elapsed=$((SECONDS - started))

if [ -z "$init_at" ] && ! grep -q "^$marker init" "$console"; then
    if [ "$outcome" = boot-timeout ]; then
        say "BOOT FAILURE: $label did not reach init within ${boot_timeout} s"
    else
        say "BOOT FAILURE: the VM stopped before $label reached init" \
            "(QEMU status $qemu_status)"
        sed 's/^/  qemu: /' "$work/qemu.out" >&2
    fi
    show_console
    exit "$EXIT_BOOT"
fi
# The guest says which kernel it runs: a run never reports one kernel's results as
# another's.
release=$(tr -d '\r' <"$console" | sed -n "s/^$marker init [^ ]* //p" | head -n1)
if [ -n "$kernel_name" ] && [[ $release != "$kernel_name" && $release != "$kernel_name".* ]]; then
    say "WRONG KERNEL: asked for Linux $kernel_name, the guest runs '$release' ($kernel)"
    exit "$EXIT_WRONG_KERNEL"
fi
if [ "$outcome" = timeout ]; then
    say "TIMEOUT: $name did not finish within ${timeout} s on Linux $release; the VM was stopped"
    show_console
    exit "$EXIT_TIMEOUT"
fi
if [ -z "$status_line" ]; then
    say "CRASH: the VM ended while $name ran on Linux $release, without a status" \
        "(QEMU status $qemu_status)"
    show_console 60
    exit "$EXIT_CRASH"
fi
read -r _ _ status _ <<<"$status_line"
if ! [[ $status =~ ^[0-9]+$ ]]; then
    say "CRASH: unreadable status line '$status_line'"
    show_console
    exit "$EXIT_CRASH"
fi
if grep -q "^$marker kernel-warnings" "$console"; then
    say "KERNEL WARNING: the guest kernel logged WARNING/BUG/Oops:"
    tr -d '\r' <"$console" | sed -n "/^$marker kernel-warnings/,\$p" | sed 1d |
        grep -v 'reboot: Power down' | sed 's/^/  | /' >&2
    if [ "$status" = 0 ] && [ "${VEIL_TESTBED_ALLOW_WARNINGS:-0}" != 1 ]; then
        say "$name passed, but the guest kernel warned: status $EXIT_WARNING"
        exit "$EXIT_WARNING"
    fi
fi
say "$name exited with status $status on Linux $release (VM ran ${elapsed} s)"
exit "$status"
