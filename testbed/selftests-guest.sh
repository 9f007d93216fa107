#!/bin/sh
# Runs inside the testbed VM (run.sh packs it with the selftest binaries beside it):
# runs each argument as one selftest command line, e.g. "private_mem_conversions_test
# -n 2", and prints one line per command after its output:
#
#   @@selftest@@ <status> <seconds> <command line>
#
# where status is the command's exit status (0 passed, 4 skipped, anything else
# failed; 124 when it ran longer than VEIL_SELFTEST_TIMEOUT seconds, default 300).
# conformance.sh reads these lines; a command with no line never reported.
cd "$(dirname "$0")" || exit 1
limit=${VEIL_SELFTEST_TIMEOUT:-300}
for command in "$@"; do
    echo "== $command"
    start=$(cut -d' ' -f1 /proc/uptime)
    # shellcheck disable=SC2086 # each argument is a whole command line
    timeout "$limit" ./$command </dev/null 2>&1
    status=$?
    end=$(cut -d' ' -f1 /proc/uptime)
    echo "@@selftest@@ $status $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }') $command"
done
