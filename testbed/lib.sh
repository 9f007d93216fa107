# Shared by the testbed scripts (sourced, not run).
#
# Knobs read here:
#   VEIL_TESTBED_CACHE  where built kernels are kept
#                       (default ${XDG_CACHE_HOME:-$HOME/.cache}/veil/testbed)
#   VEIL_TESTBED_JOBS   parallel make jobs for the kernel build (default: nproc)

TESTBED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTBED_CACHE=${VEIL_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/veil/testbed}

# Bump when the way the kernel is built changes in a way the inputs hashed by
# kernel_key do not show; the next run then builds afresh.
KERNEL_RECIPE=1
KERNEL_SOURCE_PACKAGE=linux-source-6.12

# Debian packages each part needs.
KERNEL_BUILD_PACKAGES=("$KERNEL_SOURCE_PACKAGE" build-essential bc bison flex libelf-dev
    libssl-dev xz-utils)
VM_PACKAGES=(qemu-system-x86 busybox-static cpio gzip)

# Exit statuses of the testbed scripts besides the test program's own.
readonly EXIT_SETUP=121    # the host side could not be prepared (packages, kernel, QEMU)
readonly EXIT_WARNING=122  # the program passed, but the guest kernel logged WARNING/BUG/Oops
readonly EXIT_BOOT=123     # the guest never reached its init (kernel crash, hang, bad image)
readonly EXIT_TIMEOUT=124  # the program did not finish within the time allowed
readonly EXIT_CRASH=125    # the guest ended while the program ran, without reporting a status

say() { printf '%s: %s\n' "${SCRIPT_NAME:-testbed}" "$*" >&2; }

# with_lock FILE COMMAND...: runs COMMAND holding an exclusive lock on FILE, so that
# concurrent testbed runs neither install packages nor build kernels at the same time.
with_lock() {
    local file=$1
    shift
    mkdir -p "$(dirname "$file")"
    (
        exec 9>>"$file"
        if ! flock -n 9; then
            say "waiting for $file (another testbed run holds it)"
            flock 9
        fi
        "$@"
    )
}

missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
            printf '%s\n' "$p"
    done
}

install_now() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    ((${#missing[@]})) || return 0
    say "installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" != 0 ]; then
        say "not root: install them yourself (apt-get install ${missing[*]})"
        return 1
    fi
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
}

# ensure_packages PACKAGE...: installs the packages that are missing (needs root).
ensure_packages() {
    [ -n "$(missing_packages "$@")" ] || return 0
    command -v dpkg-query >/dev/null || {
        say "dpkg-query not found: install $* by hand"
        return 1
    }
    with_lock "$TESTBED_CACHE/apt.lock" install_now "$@"
}

# kernel_key: prints the cache key of the kernel the current inputs build: a hash of
# the fragment's option lines (comments may change freely), the kernel source package
# version, the compiler and assembler versions and the recipe number.
kernel_key() {
    local source_version
    source_version=$(dpkg-query -W -f='${Version}' "$KERNEL_SOURCE_PACKAGE") || return 1
    {
        printf 'recipe %s\n' "$KERNEL_RECIPE"
        printf 'source %s %s\n' "$KERNEL_SOURCE_PACKAGE" "$source_version"
        printf 'gcc %s\n' "$(gcc -dumpfullversion)"
        printf 'as %s\n' "$(as --version | head -n1)"
        grep -E '^(CONFIG_|# CONFIG_[A-Za-z0-9_]+ is not set)' "$TESTBED_DIR/kernel.config"
    } | sha256sum | cut -c1-16
}

# build_static_tests CARGO-TEST-SELECTION...: builds veil-tests test targets as static
# binaries into target/testbed (the explicit --target keeps crt-static away from build
# scripts and proc-macros, and the normal target directory is left alone) and prints
# their paths, one per line.
build_static_tests() {
    local repo
    repo=$(cd "$TESTBED_DIR/.." && pwd)
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo test --locked -p veil-tests "$@" --target x86_64-unknown-linux-gnu \
        --target-dir "$repo/target/testbed" --no-run --message-format=json-render-diagnostics |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p'
}

# run_counted KERNEL BINARY [ARGS...]: runs a libtest BINARY in the testbed VM and adds
# its tests to the counters PASSED, FAILED and IGNORED, and the tests that printed a
# "skipping <test>: <reason>" line (veil's tests pass when they skip) to SKIPPED. The
# tests are listed on the host first, so one that never reports back (the VM crashed or
# timed out while it ran) counts as failed. Returns the run's status (0, or libtest's
# 101 when it got to report).
PASSED=0 FAILED=0 IGNORED=0 SKIPPED=0
run_counted() {
    local kernel=$1 binary=$2 log status name outcome all missing=()
    shift 2
    mapfile -t all < <("$binary" --list --format terse "$@" | sed -n 's/: test$//p')
    ((${#all[@]})) || return 0
    log=$(mktemp "${TMPDIR:-/tmp}/veil-testbed-run.XXXXXX")
    set +e
    VEIL_TESTBED_KERNEL=$kernel "$TESTBED_DIR/run.sh" "$binary" --color never "$@" | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    local -A result=()
    while read -r _ name _ outcome _; do
        # An ignored test with a reason reads "ignored, <reason>".
        result[$name]=${outcome%,}
    done < <(grep -E '^test [^ ]+ \.\.\. (ok|FAILED|ignored)' "$log" || true)
    SKIPPED=$((SKIPPED + $(grep -c '^skipping ' "$log" || true)))
    rm -f "$log"
    for name in "${all[@]}"; do
        case ${result[$name]:-} in
            ok) PASSED=$((PASSED + 1)) ;;
            ignored) IGNORED=$((IGNORED + 1)) ;;
            FAILED) FAILED=$((FAILED + 1)) ;;
            *)
                FAILED=$((FAILED + 1))
                missing+=("$name")
                ;;
        esac
    done
    ((${#missing[@]} == 0)) || say "never reported (counted as failed): ${missing[*]}"
    case $status in
        0 | 101) ;; # libtest's own verdicts; the counts say which
        *) say "the testbed run of $(basename "$binary") ended with status $status (see above)" ;;
    esac
    return "$status"
}
