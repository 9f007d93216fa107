#!/usr/bin/env bash
# Builds a testbed kernel, or finds it already built, and prints the path of its
# bzImage on stdout (messages go to stderr).
#
# Usage: testbed/build-kernel.sh [KERNEL]
#
# KERNEL is one of the testbed kernels (lib.sh's TESTBED_KERNELS: 6.12, the default, and
# 7.3). Each is Debian's linux-source-KERNEL configured as `make tinyconfig` plus
# testbed/kernel-KERNEL.config: KVM on AMD SVM with CONFIG_KVM_SW_PROTECTED_VM=y.
# linux-source-6.12 comes from the machine's own apt sources; linux-source-7.3 from
# trixie-backports, through a private apt configuration in the cache (the machine's
# apt sources are left alone). Kernels whose own KVM selftests are listed in lib.sh
# get them built beside the bzImage, statically, into selftests/.
#
# A kernel is cached outside the repository under $VEIL_TESTBED_CACHE/kernels/<key>/,
# where <key> hashes everything its build depends on (see kernel_key in lib.sh), and
# reused by every later run with the same inputs. A lock keeps concurrent runs from
# building at once; the finished kernel is published with one rename, so a reader
# never sees half of it.
#
# Exit status: 0 with the path printed; 2 usage; 119 the kernel did not configure or
# build; 120 a package was missing and could not be installed or fetched; 121 any
# other trouble preparing the build. Every message names the kernel.
#
# Knobs: VEIL_TESTBED_CACHE, VEIL_TESTBED_JOBS, VEIL_TESTBED_MIRROR,
# VEIL_TESTBED_APT_REFRESH (see lib.sh); VEIL_TESTBED_VERBOSE=1 shows the kernel build's
# own output instead of keeping it in a log.
set -euo pipefail
SCRIPT_NAME=build-kernel
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

# check_config CONFIG: every `CONFIG_X=v` line of the kernel's configuration file (and
# of KERNEL_REQUIRED) must appear verbatim in CONFIG, and every `# CONFIG_X is not set`
# line must not be enabled there. Kconfig silently drops options whose dependencies are
# missing, and renames options between releases, so this is what turns a wrong
# configuration into an error.
check_config() {
    local config=$1 line opt bad=0
    while IFS= read -r line; do
        case $line in
            CONFIG_*=*)
                if ! grep -qxF -- "$line" "$config"; then
                    say "option not applied: $line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo 'not present'))"
                    bad=1
                fi
                ;;
            "# CONFIG_"*" is not set")
                opt=${line#"# "}
                opt=${opt%% *}
                if grep -q "^$opt=" "$config"; then
                    say "option should be off: $(grep "^$opt=" "$config")"
                    bad=1
                fi
                ;;
        esac
    done < <(cat "$KERNEL_CONFIG"; printf '%s\n' "${KERNEL_REQUIRED[@]}")
    return "$bad"
}

# Deletes the trash-* directories of the cache in the background. The deletion does not
# inherit the build lock's descriptor (9, see with_lock): it would hold the lock, and the
# next kernel's build would wait for it.
sweep_trash() {
    local trash=("$TESTBED_CACHE"/trash-*)
    [ -e "${trash[0]}" ] || return 0
    (rm -rf "${trash[@]}" </dev/null >/dev/null 2>&1 9>&- &)
}

# build_selftests WORK STAGING: builds KERNEL_SELFTESTS in the source tree WORK,
# statically (the testbed's initramfs has no C library), into STAGING/selftests.
build_selftests() {
    local work=$1 staging=$2 dir targets=() t path started=$SECONDS
    dir=$work/tools/testing/selftests/kvm
    for t in "${KERNEL_SELFTESTS[@]}"; do
        targets+=("$dir/$t")
    done
    say "building the kernel's KVM selftests: ${KERNEL_SELFTESTS[*]}"
    {
        make -C "$work" ARCH=x86_64 -j"$jobs" headers &&
            make -C "$dir" ARCH=x86_64 -j"$jobs" EXTRA_CFLAGS=-static "${targets[@]}"
    } >>"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        say "building the selftests failed"
        return 1
    }
    mkdir -p "$staging/selftests" || return 1
    for path in "${targets[@]}"; do
        if readelf -lW "$path" 2>/dev/null | grep -q 'program interpreter'; then
            say "$(basename "$path") came out dynamically linked"
            return 1
        fi
        cp "$path" "$staging/selftests/" || return 1
    done
    say "selftests built in $((SECONDS - started)) s"
}

build() {
    local key=$1 out=$2 tarball=$3 version=$4
    if [ -f "$out/bzImage" ]; then
        return 0 # built by the run we waited for
    fi
    local work=$TESTBED_CACHE/build-$key staging=$TESTBED_CACHE/kernels/.staging-$key
    local jobs=${VEIL_TESTBED_JOBS:-$(nproc)} started=$SECONDS log
    # Directories left by interrupted or failed builds are of no use: no other build
    # runs while this one holds the lock, so move them aside and delete them in the
    # background (a source tree takes minutes to delete on a busy machine).
    local old
    for old in "$TESTBED_CACHE"/build-* "$TESTBED_CACHE"/kernels/.staging-*; do
        [ -e "$old" ] || continue
        mv -T "$old" "$TESTBED_CACHE/trash-$(basename "$old")-$$" || return "$EXIT_SETUP"
    done
    sweep_trash
    mkdir -p "$work" "$staging" || return "$EXIT_SETUP"
    log=$work/build.log
    say "building kernel $key from $tarball with $jobs jobs (minutes; log: $log)"
    tar -C "$work" --strip-components=1 -xf "$tarball" || {
        say "unpacking $tarball failed"
        return "$EXIT_SETUP"
    }

    local make=(make -C "$work" ARCH=x86_64 -j"$jobs")
    {
        "${make[@]}" tinyconfig
        (cd "$work" && scripts/kconfig/merge_config.sh -m .config "$KERNEL_CONFIG")
        "${make[@]}" olddefconfig
    } >"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        say "configuring the kernel failed"
        return "$EXIT_KERNEL_BUILD"
    }
    check_config "$work/.config" || {
        say "the configuration lacks options $(basename "$KERNEL_CONFIG") or lib.sh asks for"
        return "$EXIT_KERNEL_BUILD"
    }
    say "configuration checked ($(($(wc -l <"$work/.config"))) lines); running make bzImage"
    if [ "${VEIL_TESTBED_VERBOSE:-0}" = 1 ]; then
        "${make[@]}" bzImage 2>&1 | tee -a "$log" >&2
    else
        "${make[@]}" bzImage >>"$log" 2>&1
    fi || {
        tail -n 40 "$log" >&2
        say "make bzImage failed"
        return "$EXIT_KERNEL_BUILD"
    }
    local kernel_built=$SECONDS
    say "bzImage built in $((kernel_built - started)) s"
    if ((${#KERNEL_SELFTESTS[@]})); then
        build_selftests "$work" "$staging" || return "$EXIT_KERNEL_BUILD"
    fi

    # `set -e` does not apply here (this runs as the left side of `||`): check each step.
    cp "$work/arch/x86/boot/bzImage" "$staging/bzImage" &&
        cp "$work/.config" "$staging/config" &&
        cp "$KERNEL_CONFIG" "$staging/kernel.config" || return "$EXIT_SETUP"
    printf 'kernel %s\nsource %s %s%s\ngcc %s\nbuilt %s: bzImage in %s s, total %s s\n' \
        "$KERNEL_NAME" "$KERNEL_SOURCE_PACKAGE" "$version" \
        "${KERNEL_SUITE:+ (from $KERNEL_SUITE)}" "$(gcc -dumpfullversion)" \
        "$(date -u +%FT%TZ)" "$((kernel_built - started))" "$((SECONDS - started))" \
        >"$staging/inputs" || return "$EXIT_SETUP"
    mv -T "$staging" "$out" || return "$EXIT_SETUP"
    say "kernel $key built in $((SECONDS - started)) s"
    # The source tree is large and slow to delete: move it aside and delete it in the
    # background. A later build sweeps whatever such a removal left behind.
    mv -T "$work" "$TESTBED_CACHE/trash-build-$key-$$" && sweep_trash
}

main() {
    [ $# -le 1 ] || usage
    case ${1:-} in -h | --help) usage ;; esac
    kernel_select "${1:-${TESTBED_KERNELS[0]}}" || exit 2
    SCRIPT_NAME="build-kernel[$KERNEL_NAME]"
    ensure_packages "${KERNEL_BUILD_PACKAGES[@]}" || {
        say "the packages to build Linux $KERNEL_NAME are missing"
        exit "$EXIT_PACKAGE"
    }
    local version key out tarball status=0
    version=$(kernel_source_version) || {
        say "cannot find the source of Linux $KERNEL_NAME ($KERNEL_SOURCE_PACKAGE)"
        exit "$EXIT_PACKAGE"
    }
    key=$(kernel_key "$version") || exit "$EXIT_SETUP"
    out=$TESTBED_CACHE/kernels/$key
    if [ ! -f "$out/bzImage" ]; then
        tarball=$(kernel_tarball "$version") || {
            say "no source tarball of Linux $KERNEL_NAME ($KERNEL_SOURCE_PACKAGE $version)"
            exit "$EXIT_PACKAGE"
        }
        with_lock "$TESTBED_CACHE/build.lock" build "$key" "$out" "$tarball" "$version" ||
            status=$?
        if ((status)); then
            say "Linux $KERNEL_NAME ($KERNEL_SOURCE_PACKAGE $version) was not built"
            exit "$status"
        fi
    fi
    printf '%s\n' "$out/bzImage"
}

main "$@"
