#!/bin/sh
# Creates a throwaway test CA and a server certificate for 127.0.0.1 and
# localhost, signed by that CA, with the openssl CLI. For tests only: the keys
# are unencrypted and the CA signs whatever it is asked to.
#
# Usage: make_ca.sh DIR [NAME]
#   DIR   output directory (created if missing)
#   NAME  a label put in the subject names (default "idv-test"); two runs with
#         different DIRs give two unrelated CAs (for TLS-mismatch tests)
#
# Writes into DIR:
#   ca.key  ca.pem          the CA (P-256 key, CA:TRUE, keyCertSign)
#   server.key  server.pem  the server (P-256 key, serverAuth,
#                           SAN IP:127.0.0.1, DNS:localhost)
# Certificates are valid from now for 30 days.
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 DIR [NAME]" >&2
    exit 2
fi
dir=$1
name=${2:-idv-test}
command -v openssl >/dev/null 2>&1 || { echo "$0: openssl not found" >&2; exit 1; }
mkdir -p "$dir"
umask 077
log="$dir/openssl.log"
: >"$log"
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "$0: failed; openssl said:" >&2; cat "$log" >&2; fi; rm -f "$log"' EXIT

cat >"$dir/ca.ext" <<EXT
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EXT
cat >"$dir/server.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EXT

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key" 2>>"$log"
openssl req -new -key "$dir/ca.key" -subj "/O=$name/CN=$name test CA" -out "$dir/ca.csr" 2>>"$log"
openssl x509 -req -in "$dir/ca.csr" -signkey "$dir/ca.key" -extfile "$dir/ca.ext" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -out "$dir/ca.pem" 2>>"$log"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/server.key" 2>>"$log"
openssl req -new -key "$dir/server.key" -subj "/O=$name/CN=localhost" -out "$dir/server.csr" 2>>"$log"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -extfile "$dir/server.ext" -set_serial "0x$(openssl rand -hex 16)" -days 30 \
    -out "$dir/server.pem" 2>>"$log"

openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" >>"$log" 2>&1
rm -f "$dir/ca.csr" "$dir/server.csr" "$dir/ca.ext" "$dir/server.ext"
chmod 644 "$dir/ca.pem" "$dir/server.pem"
echo "$dir/ca.pem $dir/server.pem $dir/server.key"
