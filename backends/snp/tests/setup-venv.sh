#!/bin/sh
# Installs sev-snp-measure 0.0.13 into a venv for the cross-check tests, and prints the
# variable that points them at it:
#   eval "$(backends/snp/tests/setup-venv.sh)"   # then cargo test -p veil-snp
# With VEIL_REQUIRE_SNP_MEASURE=1 the tests fail instead of skipping without it.
set -eu
venv="${1:-/tmp/snpvenv}"
if ! "$venv/bin/python" -c 'import sevsnpmeasure.gctx' 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet sev-snp-measure==0.0.13 >&2
fi
echo "export VEIL_SNP_MEASURE_PYTHON=$venv/bin/python"
