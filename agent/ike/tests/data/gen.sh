#!/bin/sh
# Regenerates the test certificates (run by hand; the tests only read the results).
# Fixed validity dates, so tests pass a fixed wall-clock time (2030-01-01) and never expire:
#   ca, intermediate, other-ca: 2020..2100; good leaves: 2025..2035;
#   expired: 2020..2021; not-yet-valid: 2090..2091.
set -eu
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/ca.cnf" <<'CNF'
[ca]
default_ca = this
[this]
database = $ENV::WORK/index.txt
serial = $ENV::WORK/serial
new_certs_dir = $ENV::WORK
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[any]
countryName = optional
organizationName = optional
commonName = supplied
[v3_ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = CA:false
keyUsage = digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
export WORK="$work"
: > "$work/index.txt"
echo 1000 > "$work/serial"

ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"; }
rsa() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key"; }

sign() {
    # $1 name, $2 issuer (or self), $3 subject, $4 start, $5 end, $6 SAN, $7 extensions
    if [ -n "${6:-}" ]; then
        openssl req -new -key "$1.key" -subj "$3" -addext "subjectAltName=$6" -out "$work/$1.csr"
    else
        openssl req -new -key "$1.key" -subj "$3" -out "$work/$1.csr"
    fi
    if [ "$2" = self ]; then
        openssl ca -batch -config "$work/ca.cnf" -selfsign -keyfile "$1.key" \
            -startdate "$4" -enddate "$5" -extensions "$7" -in "$work/$1.csr" -out "$1.pem" -notext
    else
        openssl ca -batch -config "$work/ca.cnf" -cert "$2.pem" -keyfile "$2.key" \
            -startdate "$4" -enddate "$5" -extensions "$7" -in "$work/$1.csr" -out "$1.pem" -notext
    fi
}

ec ca
sign ca self "/C=CH/O=Strait Test/CN=Strait Test Root" 20200101000000Z 21000101000000Z "" v3_ca
ec intermediate
sign intermediate ca "/C=CH/O=Strait Test/CN=Strait Test Intermediate" 20200101000000Z 21000101000000Z "" v3_ca
ec other-ca
sign other-ca self "/C=CH/O=Elsewhere/CN=Other Root" 20200101000000Z 21000101000000Z "" v3_ca

rsa rsa
sign rsa ca "/C=CH/O=Strait/CN=rsa.example.com" 20250101000000Z 20350101000000Z \
    "DNS:rsa.example.com" leaf
ec ecdsa
sign ecdsa intermediate "/C=CH/O=Strait/CN=ecdsa.example.com" 20250101000000Z 20350101000000Z \
    "DNS:ecdsa.example.com,email:admin@example.com,IP:192.0.2.1" leaf
ec expired
sign expired ca "/C=CH/O=Strait/CN=expired.example.com" 20200101000000Z 20210101000000Z \
    "DNS:expired.example.com" leaf
ec future
sign future ca "/C=CH/O=Strait/CN=future.example.com" 20900101000000Z 20910101000000Z \
    "DNS:future.example.com" leaf
ec stranger
sign stranger other-ca "/C=CH/O=Strait/CN=stranger.example.com" 20250101000000Z 20350101000000Z \
    "DNS:stranger.example.com" leaf
rm -f ca.key intermediate.key other-ca.key
