#!/usr/bin/env bash
# Build a small PostgreSQL image from the PostgreSQL binaries installed on this
# machine, for the test kit's docker backend where no registry is reachable.
#
# The image honours the official postgres image's contract: POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB, data directory initialised on first start,
# password (scram-sha-256) authentication over TCP, port 5432, and the final
# "database system is ready to accept connections" line on stderr.
#
# Usage: tests/docker/build-image.sh [TAG]   (default cutover-test-postgres:15-local)
# Then:  CUTOVER_TEST_BACKEND=docker CUTOVER_TEST_PG_IMAGE=TAG cargo test
set -euo pipefail

tag=${1:-cutover-test-postgres:15-local}
bindir=${PG_BINDIR:-$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
major=$("$bindir/postgres" -V | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/')
pkglibdir=$(dirname "$bindir")/lib
sharedir=/usr/share/postgresql/$major
[ -d "$sharedir" ] || sharedir=$("$bindir/pg_config" --sharedir 2>/dev/null || true)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

# A usrmerge layout, so /bin/sh, /lib and /lib64 paths resolve as on the host.
mkdir -p "$root/usr/bin" "$root/usr/lib" "$root/usr/lib64"
ln -s usr/bin "$root/bin"; ln -s usr/lib "$root/lib"; ln -s usr/lib64 "$root/lib64"

copy() { # copy a path into the image root at its real (symlink-free) location
  local real; real=$(readlink -f "$1")
  mkdir -p "$root$(dirname "$real")"
  cp -a "$real" "$root$real"
}

bins=(postgres initdb pg_ctl psql pg_isready)
for b in "${bins[@]}"; do copy "$bindir/$b"; done
# Extension modules, without the LLVM JIT (it would pull in libLLVM, ~100 MB).
mkdir -p "$root$pkglibdir"
for so in "$pkglibdir"/*.so; do case $so in */llvmjit*) ;; *) copy "$so" ;; esac; done
copy "$sharedir"
# Absolute links in the share directory (Debian's alternatives for PostGIS's
# control files): the links they go through and what they end at, else the
# image's server cannot read those control files.
find "$sharedir" -type l -lname '/*' | while read -r l; do
  t=$(readlink "$l")
  while [ -L "$t" ]; do mkdir -p "$root$(dirname "$t")"; cp -a "$t" "$root$t"; t=$(readlink "$t"); done
  if [ -e "$t" ]; then copy "$t"; fi
done
copy /usr/share/zoneinfo
copy /bin/sh
ln -sf "$(readlink -f /bin/sh)" "$root/usr/bin/sh"

# Every shared library the binaries and extension modules need, with the
# dynamic loader itself.
libs=$( { for b in "${bins[@]}"; do ldd "$bindir/$b"; done; ldd "$(readlink -f /bin/sh)";
          for so in "$pkglibdir"/*.so; do case $so in */llvmjit*) ;; *) ldd "$so" 2>/dev/null || true ;; esac; done; } \
        | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
for l in $libs; do
  copy "$l"
  # The soname link as the loader looks it up (e.g. /lib/x86_64-linux-gnu/libc.so.6).
  d=$(dirname "$l"); d=${d#/usr}; mkdir -p "$root/usr$d"
  [ -e "$root/usr$d/$(basename "$l")" ] || ln -s "$(readlink -f "$l")" "$root/usr$d/$(basename "$l")"
done

mkdir -p "$root/etc" "$root/tmp" "$root/var/run/postgresql" "$root/var/lib/postgresql/data"
chmod 1777 "$root/tmp"
cat > "$root/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/bin/sh
postgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh
PASSWD
cat > "$root/etc/group" <<GROUP
root:x:0:
postgres:x:999:
GROUP
chown -R 999:999 "$root/var/run/postgresql" "$root/var/lib/postgresql"
chmod 700 "$root/var/lib/postgresql/data"

cat > "$root/docker-entrypoint.sh" <<ENTRY
#!/bin/sh
# Minimal take on the official image's entrypoint (dash builtins only).
set -e
PATH=$bindir:/bin
export PATH
PGDATA=\${PGDATA:-/var/lib/postgresql/data}
POSTGRES_USER=\${POSTGRES_USER:-postgres}
POSTGRES_DB=\${POSTGRES_DB:-\$POSTGRES_USER}
if [ ! -s "\$PGDATA/PG_VERSION" ]; then
  if [ -z "\$POSTGRES_PASSWORD" ]; then
    echo "error: POSTGRES_PASSWORD is not set (this image always uses password authentication)" >&2
    exit 1
  fi
  pwfile=/tmp/.pwfile
  printf '%s\n' "\$POSTGRES_PASSWORD" > "\$pwfile"
  initdb -D "\$PGDATA" -U "\$POSTGRES_USER" --pwfile="\$pwfile" --encoding=UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 -N >/dev/null
  : > "\$pwfile"
  printf '%s\n' "host all all all scram-sha-256" >> "\$PGDATA/pg_hba.conf"
  printf '%s\n' "listen_addresses = '*'" >> "\$PGDATA/postgresql.conf"
  if [ "\$POSTGRES_DB" != "postgres" ]; then
    printf 'CREATE DATABASE "%s";\n' "\$POSTGRES_DB" | postgres --single -D "\$PGDATA" -j postgres >/dev/null
  fi
fi
exec postgres -D "\$PGDATA" "\$@"
ENTRY
chmod 755 "$root/docker-entrypoint.sh"

cat > "$root/Dockerfile" <<DOCKERFILE
FROM scratch
COPY . /
COPY --chown=999:999 var/ /var/
USER 999:999
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/docker-entrypoint.sh"]
DOCKERFILE

# The legacy builder's deprecation notice is noise here; real errors still show.
docker build -q -t "$tag" -f "$root/Dockerfile" "$root" 2> >(grep -v -e DEPRECATED -e buildx -e 'Install the' -e '^\s*$' >&2) >/dev/null
echo "built $tag from $bindir ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
