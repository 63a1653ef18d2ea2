#!/usr/bin/env bash
# Installs the Centrifugo SDK agents' environments (see tests/sdk/README.md):
#   js: the npm packages of tests/sdk/js/package-lock.json into ROOT/js
#       (`npm ci`, lockfile copied there);
#   py: a virtualenv at ROOT/py with tests/sdk/py/requirements.txt
#       (`pip install --require-hashes`);
#   api: a virtualenv at ROOT/api with tests/api-client/requirements.txt (the
#       `cent` HTTP API client and schemathesis), likewise;
#   redis8: a redis-server with per-field expiry (Redis 8.0, built from the
#       source tarball Debian 13 ships, pinned by sha256) at
#       ROOT/redis8/redis-server, for the presence tests of that layout.
# Usage: tests/sdk/install.sh js|py|api|redis8|all [ROOT]
# ROOT defaults to $CARGO_TARGET_DIR/sdk, else <repo>/target/sdk.
#
# Idempotent and safe to run from many processes at once: each environment is
# installed under a lock (flock on ROOT/.KIND.lock) and stamped with a hash of
# what it was made from (the lockfile or requirements, and the interpreter);
# a matching stamp means installed and up to date, so nothing is done. The
# stamp is written last: an interrupted install is redone. The lock waits at
# most ROOMCAST_SDK_LOCK_WAIT seconds (default 900).
# Prints the installed folder. Fails with a message naming what is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
kind="${1:-}"
root="${2:-${CARGO_TARGET_DIR:-$repo/target}/sdk}"
lock_wait="${ROOMCAST_SDK_LOCK_WAIT:-900}"

die() {
  echo "tests/sdk/install.sh: $*" >&2
  exit 1
}

need_tool() {
  command -v "$1" >/dev/null 2>&1 || die "\`$1\` is not on PATH: $2"
}

# sha256 of the named files' contents and of the extra text in $extra.
stamp_of() {
  { for f in "$@"; do printf '%s\n' "$(basename "$f")"; cat "$f"; done; printf '%s\n' "$extra"; } |
    sha256sum | cut -d' ' -f1
}

install_js() {
  need_tool node "install Node.js 18 or later (Debian: apt-get install nodejs npm)"
  need_tool npm "install npm (Debian: apt-get install npm)"
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  [ "$major" -ge 18 ] || die "Node.js $(node --version) is too old: the agent needs 18 or later"
  local dest="$root/js"
  extra="node $(node --version)"
  local want
  want="$(stamp_of "$here/js/package.json" "$here/js/package-lock.json")"
  if [ "$(cat "$dest/.stamp" 2>/dev/null || true)" = "$want" ]; then
    echo "$dest"
    return
  fi
  echo "installing the JS SDK agent's packages into $dest" >&2
  rm -rf "$dest"
  mkdir -p "$dest"
  cp "$here/js/package.json" "$here/js/package-lock.json" "$dest/"
  (cd "$dest" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2) ||
    die "npm ci in $dest failed (see above)"
  [ -f "$dest/node_modules/centrifuge/package.json" ] && [ -f "$dest/node_modules/ws/package.json" ] ||
    die "npm ci in $dest installed no centrifuge or ws"
  echo "$want" >"$dest/.stamp"
  echo "$dest"
}

py_stamp() {
  extra="python $1 $("$1" -c 'import sys; print(sys.version)')"
  stamp_of "$2"
}

install_py() {
  install_venv py "$here/py/requirements.txt" "import centrifuge, websockets"
}

install_api() {
  install_venv api "$repo/tests/api-client/requirements.txt" "import cent, schemathesis"
}

# install_venv NAME REQUIREMENTS IMPORT: a virtualenv at ROOT/NAME.
install_venv() {
  mkdir -p "$root"
  local dest="$root/$1" reqs="$2" check="$3"
  local py="" want cand
  # Up to date with the interpreter it was made with: nothing to do.
  py="$(cat "$dest/.python" 2>/dev/null || true)"
  if [ -n "$py" ] && [ -x "$py" ] && [ -x "$dest/bin/python" ] &&
    [ "$(cat "$dest/.stamp" 2>/dev/null || true)" = "$(py_stamp "$py" "$reqs")" ]; then
    echo "$dest"
    return
  fi
  # The first Python >= 3.10 (centrifuge-python needs it) that makes a
  # virtualenv with pip: $PYTHON, then python3, then Debian's /usr/bin/python3
  # (which needs python3-venv for it).
  py=""
  for cand in ${PYTHON:-} python3 /usr/bin/python3; do
    command -v "$cand" >/dev/null 2>&1 || continue
    "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null || continue
    rm -rf "$dest"
    if "$cand" -m venv "$dest" >/dev/null 2>&1 && [ -x "$dest/bin/pip" ]; then
      # The interpreter itself, not a shim in front of it.
      py="$("$cand" -c 'import sys; print(sys.executable)')"
      break
    fi
  done
  if [ -z "$py" ]; then
    rm -rf "$dest"
    die "no Python 3.10+ on PATH makes a virtualenv with pip (Debian: apt-get install python3-venv)"
  fi
  echo "installing the virtualenv of $reqs into $dest (with $py)" >&2
  want="$(py_stamp "$py" "$reqs")"
  "$dest/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-hashes --no-deps --only-binary=:all: -r "$reqs" >&2 ||
    die "pip install --require-hashes -r $reqs failed (see above)"
  "$dest/bin/python" -c "$check" >&2 ||
    die "the virtualenv in $dest cannot $check"
  echo "$py" >"$dest/.python"
  echo "$want" >"$dest/.stamp"
  echo "$dest"
}

# Redis 8.0 from Debian 13's source package (its .orig tarball is upstream's
# release). Debian 12's own redis-server is 7.0, without per-field expiry, and
# Debian 13's binary needs a newer libc: so it is built here (MALLOC=libc, no
# TLS: what the tests need), which takes one to three minutes.
REDIS8_VERSION=8.0.2
REDIS8_URL="http://deb.debian.org/debian/pool/main/r/redis/redis_${REDIS8_VERSION}.orig.tar.gz"
REDIS8_SHA256=caf3c0069f06fc84c5153bd2a348b204c578de80490c73857bee01d9b5d7401f

install_redis8() {
  local dest="$root/redis8" want
  extra="$REDIS8_URL $REDIS8_SHA256 $(gcc --version 2>/dev/null | head -1)"
  want="$(stamp_of)"
  if [ -x "$dest/redis-server" ] && [ "$(cat "$dest/.stamp" 2>/dev/null || true)" = "$want" ]; then
    echo "$dest"
    return
  fi
  need_tool curl "install curl (Debian: apt-get install curl)"
  need_tool make "install make and gcc (Debian: apt-get install build-essential)"
  need_tool gcc "install gcc (Debian: apt-get install build-essential)"
  echo "building redis-server $REDIS8_VERSION into $dest" >&2
  rm -rf "$dest"
  mkdir -p "$dest/build"
  local tarball="$dest/build/redis.tar.gz"
  curl -fsSL --retry 3 -o "$tarball" "$REDIS8_URL" || die "download of $REDIS8_URL failed"
  echo "$REDIS8_SHA256  $tarball" | sha256sum -c --quiet - >&2 ||
    die "$REDIS8_URL does not have the pinned sha256"
  tar -xzf "$tarball" -C "$dest/build" || die "cannot unpack $tarball"
  (cd "$dest/build/redis-$REDIS8_VERSION" &&
    make -j"$(nproc)" MALLOC=libc BUILD_TLS=no redis-server >"$dest/build.log" 2>&1) ||
    die "building redis-server failed; the end of $dest/build.log: $(tail -20 "$dest/build.log")"
  cp "$dest/build/redis-$REDIS8_VERSION/src/redis-server" "$dest/redis-server"
  rm -rf "$dest/build"
  "$dest/redis-server" --version >&2 || die "the built redis-server does not run"
  echo "$want" >"$dest/.stamp"
  echo "$dest"
}

locked() {
  need_tool flock "install util-linux"
  mkdir -p "$root"
  local lock="$root/.$1.lock"
  (
    flock -w "$lock_wait" 9 || die "waited ${lock_wait}s for $lock"
    "install_$1"
  ) 9>"$lock"
}

case "$kind" in
  js | py | api | redis8) locked "$kind" ;;
  all) locked js && locked py && locked api && locked redis8 ;;
  *) die "usage: tests/sdk/install.sh js|py|api|redis8|all [ROOT]" ;;
esac
