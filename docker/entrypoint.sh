#!/bin/sh
# A lab node: on first start makes the sparse disk file and nraid's metadata
# on it, then runs the daemon in the foreground (the container's process;
# `nraid down` ends it). The node's name is the container's hostname.
set -eu
disk=${NRAID_DISK:-/var/lib/nraid/disk.img}
size=${NRAID_DISK_SIZE:-256M}
if [ ! -e "$disk" ]; then
  truncate -s "$size" "$disk"
  nraid create-md
fi
exec nraid up --foreground
