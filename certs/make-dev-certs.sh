#!/usr/bin/env bash
# Remakes the development PKI in this folder: a dev CA and a localhost certificate it signs
# (ECDSA P-256; names localhost, 127.0.0.1, ::1; valid 10 years).
# For development and the demo only: the CA key is public, never trust it anywhere else.
#   bash certs/make-dev-certs.sh
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out dev-ca.key
openssl req -x509 -new -key dev-ca.key -sha256 -days 3650 -subj "/CN=wsgate dev CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out dev-ca.crt

openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out localhost.key
openssl req -new -key localhost.key -subj "/CN=localhost" -out "$tmp/localhost.csr"
cat > "$tmp/ext.cnf" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in "$tmp/localhost.csr" -CA dev-ca.crt -CAkey dev-ca.key -CAcreateserial \
  -CAserial "$tmp/ca.srl" -days 3650 -sha256 -extfile "$tmp/ext.cnf" -out localhost.crt
echo "wrote $(pwd)/{dev-ca,localhost}.{crt,key}"
