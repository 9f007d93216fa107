#!/usr/bin/env bash
# Builds the testbed kernel, or finds it already built, and prints the path of its
# bzImage on stdout (messages go to stderr).
#
# The kernel is Debian's linux-source-6.12 configured as `make tinyconfig` plus
# testbed/kernel.config: KVM on AMD SVM with CONFIG_KVM_SW_PROTECTED_VM=y. It is cached
# outside the repository under $VEIL_TESTBED_CACHE/kernels/<key>/, where <key> hashes
# everything the build depends on (see kernel_key in lib.sh), and reused by every later
# run with the same inputs. A lock keeps concurrent runs from building at once; the
# finished kernel is published with one rename, so a reader never sees half of it.
#
# Usage: testbed/build-kernel.sh
# Knobs: VEIL_TESTBED_CACHE, VEIL_TESTBED_JOBS (see lib.sh); VEIL_TESTBED_VERBOSE=1
# shows the kernel build's own output instead of keeping it in a log.
set -euo pipefail
SCRIPT_NAME=build-kernel
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Options that must be in the final configuration whatever the fragment says: without
# them the testbed cannot create software-protected VMs.
REQUIRED_OPTIONS=(CONFIG_KVM=y CONFIG_KVM_AMD=y CONFIG_KVM_SW_PROTECTED_VM=y
    CONFIG_KVM_PRIVATE_MEM=y CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES=y
    CONFIG_SERIAL_8250_CONSOLE=y CONFIG_BLK_DEV_INITRD=y CONFIG_RD_GZIP=y)

# check_config CONFIG FRAGMENT: every `CONFIG_X=v` line of FRAGMENT (and of
# REQUIRED_OPTIONS) must appear verbatim in CONFIG, and every `# CONFIG_X is not set`
# line must not be enabled there. Kconfig silently drops options whose dependencies
# are missing, so this is what turns a wrong fragment into an error.
check_config() {
    local config=$1 fragment=$2 line opt bad=0
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
    done < <(cat "$fragment"; printf '%s\n' "${REQUIRED_OPTIONS[@]}")
    return "$bad"
}

# Deletes the trash-* directories of the cache in the background.
sweep_trash() {
    local trash=("$TESTBED_CACHE"/trash-*)
    [ -e "${trash[0]}" ] || return 0
    (rm -rf "${trash[@]}" </dev/null >/dev/null 2>&1 &)
}

build() {
    local key=$1 out=$2
    if [ -f "$out/bzImage" ]; then
        return 0 # built by the run we waited for
    fi
    local work=$TESTBED_CACHE/build-$key staging=$TESTBED_CACHE/kernels/.staging-$key
    local tarball jobs=${VEIL_TESTBED_JOBS:-$(nproc)} started=$SECONDS log
    tarball=$(compgen -G "/usr/src/$KERNEL_SOURCE_PACKAGE.tar.*" | head -n1) || true
    [ -n "$tarball" ] || {
        say "no /usr/src/$KERNEL_SOURCE_PACKAGE.tar.* (package $KERNEL_SOURCE_PACKAGE)"
        return 1
    }
    # Directories left by interrupted or failed builds are of no use: no other build
    # runs while this one holds the lock, so move them aside and delete them in the
    # background (a source tree takes minutes to delete on a busy machine).
    local old
    for old in "$TESTBED_CACHE"/build-* "$TESTBED_CACHE"/kernels/.staging-*; do
        [ -e "$old" ] || continue
        mv -T "$old" "$TESTBED_CACHE/trash-$(basename "$old")-$$" || return 1
    done
    sweep_trash
    mkdir -p "$work" "$staging" || return 1
    log=$work/build.log
    say "building kernel $key from $tarball with $jobs jobs (a few minutes; log: $log)"
    tar -C "$work" --strip-components=1 -xf "$tarball" || {
        say "unpacking $tarball failed"
        return 1
    }

    local make=(make -C "$work" ARCH=x86_64 -j"$jobs")
    {
        "${make[@]}" tinyconfig
        (cd "$work" && scripts/kconfig/merge_config.sh -m .config "$TESTBED_DIR/kernel.config")
        "${make[@]}" olddefconfig
    } >"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        say "configuring the kernel failed"
        return 1
    }
    check_config "$work/.config" "$TESTBED_DIR/kernel.config" || {
        say "the configuration lacks options testbed/kernel.config asks for"
        return 1
    }
    say "configuration checked ($(($(wc -l <"$work/.config"))) lines); running make bzImage"
    if [ "${VEIL_TESTBED_VERBOSE:-0}" = 1 ]; then
        "${make[@]}" bzImage 2>&1 | tee -a "$log" >&2
    else
        "${make[@]}" bzImage >>"$log" 2>&1
    fi || {
        tail -n 40 "$log" >&2
        say "make bzImage failed"
        return 1
    }

    # `set -e` does not apply here (this runs as the left side of `||`): check each step.
    cp "$work/arch/x86/boot/bzImage" "$staging/bzImage" &&
        cp "$work/.config" "$staging/config" &&
        cp "$TESTBED_DIR/kernel.config" "$staging/kernel.config" || return 1
    printf 'source %s %s\ngcc %s\nbuilt %s in %s s\n' "$KERNEL_SOURCE_PACKAGE" \
        "$(dpkg-query -W -f='${Version}' "$KERNEL_SOURCE_PACKAGE")" \
        "$(gcc -dumpfullversion)" "$(date -u +%FT%TZ)" "$((SECONDS - started))" \
        >"$staging/inputs" || return 1
    mv -T "$staging" "$out" || return 1
    say "kernel $key built in $((SECONDS - started)) s"
    # The source tree is large and slow to delete: move it aside and delete it in the
    # background. A later build sweeps whatever such a removal left behind.
    mv -T "$work" "$TESTBED_CACHE/trash-build-$key-$$" && sweep_trash
}

main() {
    if [ $# -gt 0 ]; then
        sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
        exit 2
    fi
    ensure_packages "${KERNEL_BUILD_PACKAGES[@]}" || exit "$EXIT_SETUP"
    local key out
    key=$(kernel_key) || exit "$EXIT_SETUP"
    out=$TESTBED_CACHE/kernels/$key
    if [ ! -f "$out/bzImage" ]; then
        with_lock "$TESTBED_CACHE/build.lock" build "$key" "$out" || exit "$EXIT_SETUP"
    fi
    printf '%s\n' "$out/bzImage"
}

main "$@"
