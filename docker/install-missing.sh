#!/bin/sh
# apt-get install of the named Debian packages that are not installed yet
# (none on the lab's debootstrapped base, which needs no network then).
set -eu
missing=""
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
[ -z "$missing" ] && exit 0
echo "install-missing:$missing"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
rm -rf /var/lib/apt/lists/*
