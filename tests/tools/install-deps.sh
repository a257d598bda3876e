#!/usr/bin/env bash
# Installs every Debian 12 package the project needs to build, run and test.
# Idempotent. Runs `apt-get update` first only when asked (--update) or when
# the package lists are empty (a fresh machine).
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config clang
  # libFuzzer and clang's sanitizer runtimes (only a Recommends of clang)
  libclang-rt-14-dev
  # libraries (see CMakeLists.txt: configure names the package when one is missing)
  libuv1-dev libssl-dev libpq-dev libcurl4-openssl-dev libjansson-dev libsystemd-dev
  node-llhttp
  # run and test
  postgresql postgresql-client openssl curl ca-certificates python3 procps iproute2
  systemd
  # the operator's kit in systemd/examples: haproxy -c and a real HAProxy,
  # promtool and a real Prometheus (2.42; --no-install-recommends below keeps
  # prometheus-node-exporter out)
  haproxy prometheus
  # tests/interop: Alibaba's own signing libraries, from npm (package-lock.json)
  nodejs npm
  # highly available PostgreSQL (tests/integration/test_patroni.py): Patroni 3.0
  # with etcd 3.4, whose API v3 Patroni's etcd3 module reaches through
  # python3-etcd (imported, but not a dependency of the Debian package)
  patroni etcd-server python3-etcd
)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo)
fi

update=0
[ "${1:-}" = "--update" ] && update=1
if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then update=1; fi

# Installed, or a virtual package an installed one provides (a nodejs build
# that bundles npm provides npm, and conflicts with Debian's).
installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" && return 0
  dpkg-query -W -f='${Status}|${Provides}\n' 2>/dev/null | sed -n 's/^install ok installed|//p' |
    tr ',' '\n' | sed 's/ *(.*//; s/^ *//' | grep -x -- "$1" >/dev/null
  # (not grep -q: it exits at the first match, sed then dies of SIGPIPE and,
  # under pipefail, the pipeline fails although the package is provided)
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if [ $update -eq 1 ]; then "${SUDO[@]}" apt-get update -q; fi
echo "install-deps: installing ${missing[*]}"
# Services installed here must not start: the project runs its own clusters
# (PostgreSQL's on 5432, etcd's on 2379 would otherwise be left running). A
# policy-rc.d that forbids starting them is put in place for the install when
# the machine has none (containers usually do).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# install-deps.sh: no service starts during this install\nexit 101\n' |
    "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  trap '"${SUDO[@]}" rm -f "$policy"' EXIT
fi
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
# Where systemd runs, these start their services on install (Prometheus on
# :9090, etcd on :2379) unless a policy-rc.d forbade it. The tests start
# their own: stop and disable the ones just installed, and only those.
if [ -d /run/systemd/system ]; then
  for p in "${missing[@]}"; do
    case "$p" in
      haproxy | prometheus | patroni) "${SUDO[@]}" systemctl disable --now "$p.service" || true ;;
      etcd-server) "${SUDO[@]}" systemctl disable --now etcd.service || true ;;
    esac
  done
fi
