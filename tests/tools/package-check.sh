#!/usr/bin/env bash
# Packaging and unit checks: builds the release preset, makes the .deb with
# cpack, installs it on this machine (apt resolves its declared dependencies),
# runs the installed binary's `version` and `check-config`, verifies the
# installed systemd units and checks their exposure score (at most 1.5).
# Needs root (it installs a package). Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."

cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
(cd build/release && rm -f idv-callbackd_*.deb && cpack -G DEB >/dev/null)
deb=$(ls build/release/idv-callbackd_*.deb)
echo "package-check: $(dpkg-deb -f "$deb" Package Version Depends | tr '\n' ' ')"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "./$deb" >/dev/null

/usr/bin/idv-callbackd version

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/admin-token"
chmod 600 "$tmp/admin-token"
sed -e "s|^database_url = .*|database_url = host=/var/run/postgresql dbname=idv user=idvapp password=s3cret|" \
    -e "s|^public_base_url = .*|public_base_url = https://idv.example.com|" \
    /usr/share/doc/idv-callbackd/idv-callbackd.conf.example >"$tmp/idv-callbackd.conf"
out=$(CREDENTIALS_DIRECTORY=$tmp /usr/bin/idv-callbackd check-config --config "$tmp/idv-callbackd.conf")
echo "$out" | head -5
if echo "$out" | grep -q "s3cret"; then
  echo "package-check: check-config printed a secret" >&2
  exit 1
fi
# A bad value exits 2 and names the key.
echo "db_pool_size = lots" >>"$tmp/idv-callbackd.conf"
set +e
CREDENTIALS_DIRECTORY=$tmp /usr/bin/idv-callbackd check-config --config "$tmp/idv-callbackd.conf" 2>"$tmp/err"
rc=$?
set -e
if [ $rc -ne 2 ] || ! grep -q db_pool_size "$tmp/err"; then
  echo "package-check: expected exit 2 naming db_pool_size, got $rc: $(cat "$tmp/err")" >&2
  exit 1
fi

unitdir=/usr/lib/systemd/system
systemd-analyze verify --man=no "$unitdir/idv-callbackd.service" "$unitdir/idv-callbackd.socket" \
  "$unitdir/idv-callbackd-maintain.service" "$unitdir/idv-callbackd-maintain.timer"
for unit in idv-callbackd.service idv-callbackd-maintain.service; do
  score=$(systemd-analyze security --offline=true "$unitdir/$unit" 2>&1 |
          sed -n "s/.*Overall exposure level for $unit: \([0-9.]*\).*/\1/p")
  echo "package-check: systemd-analyze security exposure of $unit $score"
  awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.5) }' || {
    echo "package-check: exposure of $unit $score is above 1.5" >&2
    exit 1
  }
done
# The timer starts the maintenance service, which runs the installed binary's
# maintain: here without a database, it must say it cannot connect (exit 1).
grep -q '^ExecStart=/usr/bin/idv-callbackd maintain ' "$unitdir/idv-callbackd-maintain.service" || {
  echo "package-check: idv-callbackd-maintain.service does not run maintain" >&2
  exit 1
}
set +e
IDV_DATABASE_URL="host=$tmp/nowhere connect_timeout=2" \
  /usr/bin/idv-callbackd maintain --config /dev/null >"$tmp/maint" 2>&1
rc=$?
set -e
if [ $rc -ne 1 ] || ! grep -q "maintain: cannot connect" "$tmp/maint"; then
  echo "package-check: maintain without a database: exit $rc: $(cat "$tmp/maint")" >&2
  exit 1
fi
echo "package-check: ok"
