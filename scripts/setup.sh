#!/usr/bin/env bash
# Installs what nraid needs on Debian 12 (run as root, Node 20 already present):
# the compiler for the native addon, the tools the tests and the demo use,
# then the npm dependencies (which build the addon).
set -euo pipefail
cd "$(dirname "$0")/.."

# libipsec-mb-dev: the data link's AES-GCM (Intel's ipsec-mb, native/record_cipher.h), linked by the addon.
# postgresql: the PostgreSQL failover test and bench/postgres.js; podman, runc, debootstrap: the two-node lab (docker/lab.sh).
packages=(g++ make python3 e2fsprogs util-linux iproute2 coreutils fio nbdkit nbdfuse libipsec-mb-dev postgresql
  podman runc debootstrap)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "setup: npm ci (builds the native addon)"
npm ci --no-audit --no-fund
npx tsc -p tsconfig.json
echo "setup: done"
