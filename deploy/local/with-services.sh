#!/usr/bin/env bash
# Run a command against freshly started local Kafka + Redis, then always stop them.
#
#   deploy/local/with-services.sh CMD [ARGS...]
#
# Exports NPSPULSE_KAFKA_BOOTSTRAP and NPSPULSE_REDIS_URL (and the NPSPULSE_TEST_SASL_* / NPSPULSE_TEST_SSL_CAFILE
# of the SASL_SSL listener, see services.sh) for CMD and exits with CMD's exit code.
# Services are stopped on every exit path (success, failure, Ctrl-C, startup error).
# pytest's exit code 5 ("no tests collected") is kept, i.e. it counts as a failure.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICES=(bash "$SCRIPT_DIR/services.sh")   # via bash: works even if the exec bit got lost

if [[ $# -eq 0 ]]; then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi

# shellcheck disable=SC2317  # invoked via trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  "${SERVICES[@]}" stop || echo "[with-services] WARNING: stopping services failed" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# If no PYTHON is given for the readiness probe and CMD is a python interpreter, let the probe use it.
probe_python="${PYTHON:-}"
if [[ -z "$probe_python" && "$(basename -- "$1")" == python* ]]; then
  probe_python="$1"
fi

PYTHON="$probe_python" "${SERVICES[@]}" start
eval "$("${SERVICES[@]}" env)"
export NPSPULSE_KAFKA_BOOTSTRAP NPSPULSE_REDIS_URL
echo "[with-services] NPSPULSE_KAFKA_BOOTSTRAP=$NPSPULSE_KAFKA_BOOTSTRAP NPSPULSE_REDIS_URL=$NPSPULSE_REDIS_URL" >&2

is_pytest=0
for arg in "$@"; do
  case "$(basename -- "$arg")" in pytest | py.test | pytest-*) is_pytest=1 ;; esac
done

rc=0
"$@" || rc=$?

if [[ $is_pytest -eq 1 && $rc -eq 5 ]]; then
  echo "[with-services] pytest collected no tests (exit 5): treating as a failure" >&2
fi
exit "$rc"
