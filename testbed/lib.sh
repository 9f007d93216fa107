# Shared by the testbed scripts (sourced, not run).
#
# Knobs read here:
#   VEIL_TESTBED_CACHE        where built kernels, fetched sources and the private apt
#                             state are kept
#                             (default ${XDG_CACHE_HOME:-$HOME/.cache}/veil/testbed)
#   VEIL_TESTBED_JOBS         parallel make jobs for the kernel build (default: nproc)
#   VEIL_TESTBED_MIRROR       Debian mirror for suites the machine's apt sources do not
#                             list (default: the mirror those sources use for Debian)
#   VEIL_TESTBED_APT_REFRESH  1: refresh the private package lists before using them

TESTBED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTBED_CACHE=${VEIL_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/veil/testbed}

# Bump when the way the kernels are built changes in a way the inputs hashed by
# kernel_key do not show; the next run then builds afresh.
KERNEL_RECIPE=1

# The testbed kernels, oldest first. Scripts that take --kernel accept these names
# (and `all`); without it, conformance.sh and integration.sh run every one, and
# build-kernel.sh and run.sh use the first.
TESTBED_KERNELS=(6.12 7.3)

# kernel_select NAME: sets what the scripts need to know about testbed kernel NAME:
#   KERNEL_NAME            NAME
#   KERNEL_SOURCE_PACKAGE  the Debian package with its source tarball
#   KERNEL_SUITE           the Debian suite it comes from when the machine's own apt
#                          sources do not list it (then fetched with a private apt
#                          configuration in the cache; see fetch_source); empty otherwise
#   KERNEL_CONFIG          the options added to `make tinyconfig`
#   KERNEL_REQUIRED        options the final configuration must have whatever
#                          KERNEL_CONFIG says: without them the testbed cannot create
#                          software-protected VMs or run its programs
#   KERNEL_SELFTESTS       the kernel's own KVM selftests built beside it, as paths
#                          under tools/testing/selftests/kvm
#   KERNEL_SELFTEST_RUNS   the command lines conformance.sh runs them with
#   KERNEL_GUEST_ENV       NAME=VALUE words run.sh exports to programs on this kernel:
#                          the VEIL_REQUIRE_* variables of what it must offer
# Returns 2 (after saying so) for a name it does not know.
kernel_select() {
    local common=(CONFIG_KVM=y CONFIG_KVM_AMD=y CONFIG_KVM_SW_PROTECTED_VM=y
        CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES=y CONFIG_SERIAL_8250_CONSOLE=y
        CONFIG_BLK_DEV_INITRD=y)
    case ${1:-} in
        6.12)
            KERNEL_SOURCE_PACKAGE=linux-source-6.12
            KERNEL_SUITE=
            KERNEL_REQUIRED=("${common[@]}" CONFIG_KVM_PRIVATE_MEM=y)
            # 6.12 keeps the x86 selftests in x86_64/, 7.3 in x86/.
            KERNEL_SELFTESTS=(guest_memfd_test x86_64/private_mem_conversions_test
                x86_64/private_mem_kvm_exits_test pre_fault_memory_test)
            KERNEL_SELFTEST_RUNS=(guest_memfd_test private_mem_conversions_test
                "private_mem_conversions_test -n 2 -m 2" private_mem_kvm_exits_test
                pre_fault_memory_test)
            KERNEL_GUEST_ENV=()
            ;;
        7.3)
            KERNEL_SOURCE_PACKAGE=linux-source-7.3
            KERNEL_SUITE=trixie-backports
            # 6.12's CONFIG_KVM_PRIVATE_MEM is CONFIG_KVM_GUEST_MEMFD here.
            KERNEL_REQUIRED=("${common[@]}" CONFIG_KVM_GUEST_MEMFD=y)
            KERNEL_SELFTESTS=(guest_memfd_test x86/private_mem_conversions_test
                x86/private_mem_kvm_exits_test pre_fault_memory_test)
            KERNEL_SELFTEST_RUNS=(guest_memfd_test private_mem_conversions_test
                "private_mem_conversions_test -n 2 -m 2" private_mem_kvm_exits_test
                pre_fault_memory_test)
            # Its guest_memfd can back in-place memory: those tests must run, not skip.
            KERNEL_GUEST_ENV=(VEIL_REQUIRE_IN_PLACE=1)
            ;;
        *)
            say "unknown testbed kernel '${1:-}' (known: ${TESTBED_KERNELS[*]})"
            return 2
            ;;
    esac
    KERNEL_NAME=$1
    KERNEL_CONFIG=$TESTBED_DIR/kernel-$1.config
}

# Debian packages each part needs.
KERNEL_BUILD_PACKAGES=(build-essential bc bison flex libelf-dev libssl-dev xz-utils)
VM_PACKAGES=(qemu-system-x86 busybox-static cpio gzip)

# Exit statuses of the testbed scripts besides the test program's own. Every message
# that goes with one names the kernel it concerns.
readonly EXIT_WRONG_KERNEL=118 # the guest runs another kernel than the one asked for
readonly EXIT_KERNEL_BUILD=119 # the kernel did not configure or build
readonly EXIT_PACKAGE=120      # a package was missing and could not be installed or fetched
readonly EXIT_SETUP=121        # the host side could not be prepared otherwise (QEMU, tests)
readonly EXIT_WARNING=122      # the program passed, but the guest kernel logged WARNING/BUG/Oops
readonly EXIT_BOOT=123         # the guest never reached its init (kernel crash, hang, bad image)
readonly EXIT_TIMEOUT=124      # the program did not finish within the time allowed
readonly EXIT_CRASH=125        # the guest ended while the program ran, without a status

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

# --- packages from a suite the machine's apt sources do not list --------------------
# Each such suite gets an apt configuration of its own under $TESTBED_CACHE/apt/SUITE:
# a sources list naming only that suite, its own package lists and download cache. The
# machine's own apt sources are only read, for the mirror they use, and its apt state
# is never changed; the packages fetched this way are unpacked into the cache, not
# installed.

# debian_mirror: prints the Debian mirror the machine's apt sources use for the
# machine's own release (VEIL_TESTBED_MIRROR overrides it).
debian_mirror() {
    if [ -n "${VEIL_TESTBED_MIRROR:-}" ]; then
        printf '%s\n' "$VEIL_TESTBED_MIRROR"
        return 0
    fi
    local codename uri
    codename=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || return 1
    uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null |
        awk -v r="$codename" '$2 == r && $3 == "main" { print $1; exit }')
    [ -n "$uri" ] && printf '%s\n' "$uri"
}

# suite_apt SUITE ARGS...: runs apt-get (or, with `apt-cache` as the first of ARGS,
# apt-cache) with SUITE's private configuration.
suite_apt() {
    local suite=$1 tool=apt-get dir
    shift
    if [ "${1:-}" = apt-cache ]; then
        tool=apt-cache
        shift
    fi
    dir=$TESTBED_CACHE/apt/$suite
    # The state lives in the caller's cache, where apt's own sandbox user may not reach.
    "$tool" -o "APT::Sandbox::User=$(id -un)" -o "Dir::Etc::SourceList=$dir/sources.list" \
        -o "Dir::Etc::SourceParts=$dir/none" \
        -o "Dir::Etc::Preferences=$dir/none" -o "Dir::Etc::PreferencesParts=$dir/none" \
        -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" "$@"
}

# suite_update SUITE: writes SUITE's sources list and fetches its package lists.
suite_update() {
    local suite=$1 dir=$TESTBED_CACHE/apt/$1 mirror keyring
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    mirror=$(debian_mirror) || {
        say "cannot tell which Debian mirror the machine's apt sources use;" \
            "set VEIL_TESTBED_MIRROR"
        return 1
    }
    [ -f "$keyring" ] || {
        say "$keyring missing (Debian package debian-archive-keyring)"
        return 1
    }
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/none" || return 1
    printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$suite" \
        >"$dir/sources.list" || return 1
    say "fetching the package lists of $suite from $mirror (private apt configuration in $dir)"
    suite_apt "$suite" update -qq >&2
}

# suite_version SUITE PACKAGE: prints the version of PACKAGE that SUITE offers, from
# the private lists; fetches the lists first when there are none yet or when
# VEIL_TESTBED_APT_REFRESH=1.
suite_version() {
    local suite=$1 package=$2 version=
    if [ "${VEIL_TESTBED_APT_REFRESH:-0}" = 1 ] ||
        ! compgen -G "$TESTBED_CACHE/apt/$suite/lists/*_Packages*" >/dev/null; then
        with_lock "$TESTBED_CACHE/apt.lock" suite_update "$suite" || return 1
    fi
    version=$(suite_apt "$suite" apt-cache show --no-all-versions "$package" 2>/dev/null |
        sed -n 's/^Version: //p' | head -n1)
    [ -n "$version" ] || {
        say "$suite offers no package $package (lists in $TESTBED_CACHE/apt/$suite)"
        return 1
    }
    printf '%s\n' "$version"
}

# kernel_source_version: prints the version of the selected kernel's source package:
# the installed one (installing it first) or the one its suite offers.
kernel_source_version() {
    if [ -n "$KERNEL_SUITE" ]; then
        suite_version "$KERNEL_SUITE" "$KERNEL_SOURCE_PACKAGE"
    else
        ensure_packages "$KERNEL_SOURCE_PACKAGE" &&
            dpkg-query -W -f='${Version}' "$KERNEL_SOURCE_PACKAGE"
    fi
}

# kernel_key VERSION: prints the cache key of the kernel the current inputs build, for
# source package version VERSION: a hash of the configuration's option lines (comments
# may change freely), the source package and its version, the compiler and assembler
# versions, the recipe number and the selftests built beside it.
kernel_key() {
    {
        printf 'recipe %s\n' "$KERNEL_RECIPE"
        printf 'source %s %s\n' "$KERNEL_SOURCE_PACKAGE" "$1"
        printf 'gcc %s\n' "$(gcc -dumpfullversion)"
        printf 'as %s\n' "$(as --version | head -n1)"
        grep -E '^(CONFIG_|# CONFIG_[A-Za-z0-9_]+ is not set)' "$KERNEL_CONFIG"
        ((${#KERNEL_SELFTESTS[@]} == 0)) || printf 'selftest %s\n' "${KERNEL_SELFTESTS[@]}"
    } | sha256sum | cut -c1-16
}

# kernel_tarball VERSION: prints the path of the selected kernel's source tarball,
# fetching the source package into the cache first when it comes from a suite of its
# own (under the apt lock).
kernel_tarball() {
    local version=$1 dir tarball
    if [ -z "$KERNEL_SUITE" ]; then
        compgen -G "/usr/src/$KERNEL_SOURCE_PACKAGE.tar.*" | head -n1
        return
    fi
    dir=$TESTBED_CACHE/sources/${KERNEL_SOURCE_PACKAGE}_$version
    tarball=$(compgen -G "$dir/$KERNEL_SOURCE_PACKAGE.tar.*" | head -n1) || true
    if [ -z "$tarball" ]; then
        with_lock "$TESTBED_CACHE/apt.lock" fetch_source "$version" "$dir" || return 1
        tarball=$(compgen -G "$dir/$KERNEL_SOURCE_PACKAGE.tar.*" | head -n1) || true
    fi
    [ -n "$tarball" ] && printf '%s\n' "$tarball"
}

# fetch_source VERSION DIR: downloads the selected kernel's source package VERSION from
# its suite with the private configuration, and unpacks only the tarball into DIR.
# Older fetched versions of the same package are removed.
fetch_source() {
    local version=$1 dir=$2 tmp deb
    # Fetched by the run this one waited for.
    ! compgen -G "$dir/$KERNEL_SOURCE_PACKAGE.tar.*" >/dev/null || return 0
    tmp=$(mktemp -d "$TESTBED_CACHE/sources/.fetch.XXXXXX" 2>/dev/null) || {
        mkdir -p "$TESTBED_CACHE/sources" &&
            tmp=$(mktemp -d "$TESTBED_CACHE/sources/.fetch.XXXXXX")
    } || return 1
    say "downloading $KERNEL_SOURCE_PACKAGE $version from $KERNEL_SUITE"
    if ! (cd "$tmp" && suite_apt "$KERNEL_SUITE" download -qq \
        "$KERNEL_SOURCE_PACKAGE=$version" >&2); then
        # The lists may name a version the mirror no longer has: refresh them once.
        suite_update "$KERNEL_SUITE" &&
            (cd "$tmp" && suite_apt "$KERNEL_SUITE" download -qq \
                "$KERNEL_SOURCE_PACKAGE=$version" >&2) || {
            rm -rf "$tmp"
            say "cannot download $KERNEL_SOURCE_PACKAGE $version from $KERNEL_SUITE"
            return 1
        }
    fi
    deb=$(compgen -G "$tmp/*.deb" | head -n1)
    mkdir "$tmp/root" &&
        dpkg-deb --fsys-tarfile "$deb" |
        tar -x -C "$tmp/root" --wildcards "./usr/src/$KERNEL_SOURCE_PACKAGE.tar.*" || {
        rm -rf "$tmp"
        say "$deb holds no /usr/src/$KERNEL_SOURCE_PACKAGE.tar.*"
        return 1
    }
    rm -rf "$TESTBED_CACHE/sources/${KERNEL_SOURCE_PACKAGE}_"*
    mv -T "$tmp/root/usr/src" "$dir" && rm -rf "$tmp"
}

# --- running tests on each kernel ----------------------------------------------------

# parse_kernels ARGS...: takes the `--kernel NAME` options (repeatable; `all` names
# every testbed kernel) out of ARGS. Sets KERNELS, every testbed kernel when none was
# named, and REST, the other arguments in their order. Returns 2 on a bad name.
parse_kernels() {
    KERNELS=()
    REST=()
    local name
    while (($#)); do
        case $1 in
            --kernel | --kernel=*)
                if [ "$1" = --kernel ]; then
                    [ $# -ge 2 ] || {
                        say "--kernel needs a name (${TESTBED_KERNELS[*]} or all)"
                        return 2
                    }
                    name=$2
                    shift
                else
                    name=${1#--kernel=}
                fi
                shift
                if [ "$name" = all ]; then
                    KERNELS+=("${TESTBED_KERNELS[@]}")
                else
                    (kernel_select "$name") || return 2
                    KERNELS+=("$name")
                fi
                ;;
            *)
                REST+=("$1")
                shift
                ;;
        esac
    done
    ((${#KERNELS[@]})) || KERNELS=("${TESTBED_KERNELS[@]}")
    # Each kernel once, in the order given.
    local -A seen=()
    local unique=()
    for name in "${KERNELS[@]}"; do
        [ -n "${seen[$name]:-}" ] || unique+=("$name")
        seen[$name]=1
    done
    KERNELS=("${unique[@]}")
}

# worse A B: prints whichever of the two outcomes A and B is the more serious, so a run
# over several kernels exits with the worst one: host-side trouble (a package, a kernel
# build, the rest of the setup), then a wrong kernel, a boot failure, a timeout, a test
# program that never reported, a kernel warning, failed tests, success.
worse() {
    local order=(0 1 "$EXIT_WARNING" "$EXIT_CRASH" "$EXIT_TIMEOUT" "$EXIT_BOOT"
        "$EXIT_WRONG_KERNEL" "$EXIT_SETUP" "$EXIT_KERNEL_BUILD" "$EXIT_PACKAGE") i ra=-1 rb=-1
    for i in "${!order[@]}"; do
        [ "${order[$i]}" != "$1" ] || ra=$i
        [ "${order[$i]}" != "$2" ] || rb=$i
    done
    ((ra >= 0)) || ra=3 # any other status: like a program that never reported
    ((rb >= 0)) || rb=3
    if ((rb > ra)); then printf '%s\n' "$2"; else printf '%s\n' "$1"; fi
}

# describe STATUS: what an outcome means, for messages and the summary.
describe() {
    case $1 in
        0) echo "passed" ;;
        1) echo "tests failed" ;;
        "$EXIT_WARNING") echo "the guest kernel logged a warning" ;;
        "$EXIT_CRASH") echo "a test program never reported (the VM crashed or stopped)" ;;
        "$EXIT_TIMEOUT") echo "a test program did not finish in time" ;;
        "$EXIT_BOOT") echo "the kernel did not boot" ;;
        "$EXIT_WRONG_KERNEL") echo "the VM booted another kernel" ;;
        "$EXIT_SETUP") echo "the host side could not be prepared" ;;
        "$EXIT_KERNEL_BUILD") echo "the kernel did not build" ;;
        "$EXIT_PACKAGE") echo "a package was missing" ;;
        *) echo "status $1" ;;
    esac
}

# run_counted KERNEL-IMAGE BINARY [ARGS...]: runs a libtest BINARY in the testbed VM on
# the selected kernel (kernel_select) and adds its tests to the counters PASSED, FAILED
# and IGNORED, and the tests that printed a "skipping <test>: <reason>" line (veil's
# tests pass when they skip) to SKIPPED. The tests are listed on the host first, so one
# that never reports back (the VM crashed or timed out while it ran) counts as failed,
# and in UNREPORTED too. Sets OUTCOME: 0 when every test passed, 1 when one failed, or
# the testbed's status for what went wrong (see worse).
PASSED=0 FAILED=0 IGNORED=0 SKIPPED=0 UNREPORTED=0
run_counted() {
    local kernel=$1 binary=$2 log status name outcome all missing=() failed=0
    shift 2
    OUTCOME=0
    mapfile -t all < <("$binary" --list --format terse "$@" | sed -n 's/: test$//p')
    ((${#all[@]})) || return 0
    log=$(mktemp "${TMPDIR:-/tmp}/veil-testbed-run.XXXXXX")
    set +e
    VEIL_TESTBED_KERNEL=$kernel VEIL_TESTBED_KERNEL_NAME=$KERNEL_NAME \
        "$TESTBED_DIR/run.sh" "$binary" --color never "$@" | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    local -A result=()
    # Anywhere in a line: a test's line can land right after another thread's output
    # that has not reached its newline yet.
    while read -r _ name _ outcome; do
        result[$name]=$outcome
    done < <(grep -oE 'test [^ ]+ \.\.\. (ok|FAILED|ignored)' "$log" || true)
    SKIPPED=$((SKIPPED + $(grep -c '^skipping ' "$log" || true)))
    rm -f "$log"
    for name in "${all[@]}"; do
        case ${result[$name]:-} in
            ok) PASSED=$((PASSED + 1)) ;;
            ignored) IGNORED=$((IGNORED + 1)) ;;
            FAILED)
                FAILED=$((FAILED + 1))
                failed=1
                ;;
            *)
                FAILED=$((FAILED + 1))
                missing+=("$name")
                ;;
        esac
    done
    UNREPORTED=$((UNREPORTED + ${#missing[@]}))
    case $status in
        0 | 101) ;; # libtest's own verdicts; the counts say which
        "$EXIT_WARNING" | "$EXIT_BOOT" | "$EXIT_TIMEOUT" | "$EXIT_CRASH" | \
            "$EXIT_WRONG_KERNEL" | "$EXIT_SETUP" | "$EXIT_KERNEL_BUILD" | "$EXIT_PACKAGE")
            OUTCOME=$status
            say "the run of $(basename "$binary") on Linux $KERNEL_NAME ended with" \
                "status $status: $(describe "$status")"
            ;;
        *)
            OUTCOME=$EXIT_CRASH
            say "$(basename "$binary") ended with status $status on Linux $KERNEL_NAME"
            ;;
    esac
    if ((${#missing[@]})); then
        say "never reported on Linux $KERNEL_NAME (counted as failed): ${missing[*]}"
        OUTCOME=$(worse "$OUTCOME" "$EXIT_CRASH")
    fi
    ((failed == 0)) || OUTCOME=$(worse "$OUTCOME" 1)
}

# kernel_images KERNEL...: builds or finds each kernel (build-kernel.sh). Fills IMAGE
# and KERNEL_STATUS, associative arrays by kernel name the caller declares: the
# bzImage's path, and 0 or the build's exit status.
kernel_images() {
    local k status
    for k in "$@"; do
        status=0
        IMAGE[$k]=$("$TESTBED_DIR/build-kernel.sh" "$k") || status=$?
        KERNEL_STATUS[$k]=$status
        ((status == 0)) || say "Linux $k is not available: $(describe "$status") (status $status)"
    done
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

# build_static_veil [CARGO-ARGS...]: builds the `veil` binary statically into
# target/testbed, as build_static_tests does (`--release` for a release build), and
# prints its path.
build_static_veil() {
    local repo
    repo=$(cd "$TESTBED_DIR/.." && pwd)
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --locked "$@" -p veil --bin veil --target x86_64-unknown-linux-gnu \
        --target-dir "$repo/target/testbed" --message-format=json-render-diagnostics |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1
}

# prepare_veil NAME: the release `veil` binary (build_static_veil --release) in $veil and
# a scratch directory, removed on exit, in $work (named after NAME); exits with
# EXIT_SETUP if the binary does not build.
prepare_veil() {
    veil=$(build_static_veil --release) || true
    if [ -z "$veil" ] || [ ! -x "$veil" ]; then
        say "building the veil binary failed"
        exit "$EXIT_SETUP"
    fi
    work=$(mktemp -d "${TMPDIR:-/tmp}/veil-testbed-$1.XXXXXX")
    trap 'rm -rf "$work"' EXIT
}
