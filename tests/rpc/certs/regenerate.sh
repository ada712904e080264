#!/usr/bin/env bash
# Regenerates the rpc suites' test certificates (test-only keys: never use them elsewhere).
# They are checked in, valid from 2000 to 2126 (a machine whose clock is off by years still
# accepts them), so that the tests need no openssl CLI and no clock games; run this (needs the openssl CLI) only to change them, and commit the result.
#
#   ca.pem            the test CA (its key is not kept: nothing else is signed by it later)
#   server.pem/.key   the server: SAN DNS:localhost, IP:127.0.0.1
#   node-a.pem/.key   a client: SAN URI:spiffe://framekit.test/node-a
#   node-b.pem/.key   a client: SAN URI:spiffe://framekit.test/node-b
#   cn-only.pem/.key  a client with no SAN: CN=node-c.framekit.test
#   expired.pem/.key  a client, node-a's identity, expired in 2001
#   rogue.pem/.key    a client, node-a's identity, signed by another CA (rogue-ca.pem)
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Every certificate is valid from `start` to `end`, but the expired one.
start=20000101000000Z
end=21260101000000Z

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# conf NAME: an openssl ca configuration with a database of its own.
conf() {
  mkdir -p "$work/db-$1"
  : > "$work/db-$1/index.txt"
  openssl rand -hex 16 > "$work/db-$1/serial"
  cat > "$work/$1.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $work/db-$1/index.txt
new_certs_dir = $work/db-$1
serial = $work/db-$1/serial
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
CNF
}

# ca NAME CN: a self-signed CA.
ca() {
  key "$work/$1.key"
  openssl req -new -key "$work/$1.key" -subj "/CN=$2" -out "$work/$1.csr"
  printf '%s\n' "basicConstraints=critical,CA:TRUE" "keyUsage=critical,keyCertSign,cRLSign" \
    "subjectKeyIdentifier=hash" > "$work/$1.ext"
  conf "$1"
  openssl ca -batch -notext -selfsign -config "$work/$1.cnf" -keyfile "$work/$1.key" \
    -in "$work/$1.csr" -extfile "$work/$1.ext" -startdate "$start" -enddate "$end" \
    -out "$1.pem" 2>/dev/null
}

# leaf NAME CA CN SAN USAGE [FROM TO]: a certificate signed by CA.
leaf() {
  local name=$1 signer=$2 cn=$3 san=$4 usage=$5 from=${6:-$start} to=${7:-$end}
  key "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$work/$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    if [[ -n $san ]]; then echo "subjectAltName=$san"; fi
  } > "$work/$name.ext"
  conf "$name"
  openssl ca -batch -notext -config "$work/$name.cnf" -cert "$signer.pem" \
    -keyfile "$work/$signer.key" -in "$work/$name.csr" -extfile "$work/$name.ext" \
    -startdate "$from" -enddate "$to" -out "$name.pem" 2>/dev/null
}

ca ca "framekit test CA"
ca rogue-ca "framekit rogue CA"
leaf server ca framekit-test-server "DNS:localhost,IP:127.0.0.1" serverAuth
leaf node-a ca node-a "URI:spiffe://framekit.test/node-a" clientAuth
leaf node-b ca node-b "URI:spiffe://framekit.test/node-b" clientAuth
leaf cn-only ca node-c.framekit.test "" clientAuth
leaf expired ca node-a "URI:spiffe://framekit.test/node-a" clientAuth 20000101000000Z 20010101000000Z
leaf rogue rogue-ca node-a "URI:spiffe://framekit.test/node-a" clientAuth
chmod 644 ./*.key
echo "certificates written to $(pwd)"
