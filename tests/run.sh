#!/usr/bin/env bash
# Runs every test of cutover, on a fresh clone too: it installs the tests'
# prerequisites first (tests/prepare.sh, as root).
#
# 1. The whole workspace on the `local` backend (servers from the installed
#    PostgreSQL binaries); the docker-specific kit tests run here too.
# 2. The test kit's tests and the seed and tricky-schema cutovers again on
#    the `docker` backend (testcontainers).
#
# The docker backend uses $CUTOVER_TEST_PG_IMAGE, else the official postgres:15
# image; when that cannot be found or pulled (no registry), an image is built
# from the installed PostgreSQL binaries by tests/docker/build-image.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need and a fresh machine lacks (pgbouncer, PostgreSQL 14 and
# 17, the German locale, PostGIS, tmux, openssl, ...); idempotent.
bash tests/prepare.sh

if [ -z "${CUTOVER_TEST_PG_IMAGE:-}" ]; then
  if docker image inspect postgres:15 >/dev/null 2>&1 || timeout 60 docker pull -q postgres:15 >/dev/null 2>&1; then
    export CUTOVER_TEST_PG_IMAGE=postgres:15
  else
    echo "tests/run.sh: postgres:15 cannot be pulled here; building a local image from the installed binaries"
    bash tests/docker/build-image.sh cutover-test-postgres:15-local
    export CUTOVER_TEST_PG_IMAGE=cutover-test-postgres:15-local
  fi
fi

echo "== tests, backend local (docker image for docker-only tests: $CUTOVER_TEST_PG_IMAGE)"
CUTOVER_TEST_BACKEND=local cargo test --workspace --locked

echo "== tests, backend docker"
CUTOVER_TEST_BACKEND=docker cargo test --locked --test e2e -- kit:: cutover::seed_cutover cutover::tricky_schema online::an_online_cutover_pauses

echo "== benchmark smoke pass (tiny scale; the real run is in docs/performance.md)"
cargo run --locked -q -p cutover-bench -- --scale 1 --reps 1
cargo run --locked -q -p cutover-bench -- --scale 1 --online --online-one-size

leftover=$(pgrep -f 'cutover-testkit-' || true)
if [ -n "$leftover" ]; then
  echo "tests/run.sh: test-kit server processes left behind:" >&2
  ps -o pid,args -p $leftover >&2
  exit 1
fi
echo "== all tests passed; no test server left running"
