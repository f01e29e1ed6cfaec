#!/usr/bin/env bash
# Run the whole test suite. Servers (SeaweedFS, nginx, libvirtd, ...) are started by
# the suite's own session fixtures; Debian packages come from install-system-deps.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
"$BIN/pytest" "$@"
status=$?
if [[ $status -eq 5 ]]; then
  # pytest's "no tests collected": a suite that ran nothing must not pass.
  echo "run-tests: pytest collected no tests (exit 5) -- treating as failure" >&2
  exit 1
fi
exit $status
