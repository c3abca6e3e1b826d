#!/usr/bin/env bash
# The two-node lab on this machine, with podman and no image registry:
# builds a Debian 12 base image from Debian's packages (debootstrap, then
# podman import; cached by a content key), builds docker/Dockerfile on it,
# runs alpha and beta on their own bridge network, makes alpha Primary,
# writes a file through it, switches over, checks the file on beta, and
# tears everything down (containers, network, volumes, loop devices).
#
#   docker/lab.sh [run]    everything above, with timings (the default)
#   docker/lab.sh base     only the base image (prints its tag)
#   docker/lab.sh image    base + nraid image
#   docker/lab.sh up       base + image + the two running nodes
#   docker/lab.sh scenario the switchover scenario on running nodes
#   docker/lab.sh down     removes what up made (also after a failed run)
#
# Needs root, podman and runc (Debian's packages), debootstrap, and a Node 20
# installed from a .deb (its files are copied into the base image: Debian 12's
# own nodejs is 18). scripts/setup.sh installs podman, runc and debootstrap.
#
# Environment: NRAID_LAB_ID (default nraidlab) prefixes every container,
# network and volume name; NRAID_LAB_SUBNET (default 10.213.77.0/24) is the
# lab network (alpha .2, beta .3); NRAID_LAB_MIRROR the Debian mirror
# (default http://deb.debian.org/debian); NRAID_LAB_CACHE (default
# /var/cache/nraid-lab) holds the debootstrap's downloaded packages.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
lab_id=${NRAID_LAB_ID:-nraidlab}
subnet=${NRAID_LAB_SUBNET:-10.213.77.0/24}
mirror=${NRAID_LAB_MIRROR:-http://deb.debian.org/debian}
cache_dir=${NRAID_LAB_CACHE:-/var/cache/nraid-lab}
suite=bookworm
# What nraid and its build need; the Dockerfile installs only what is missing,
# so with this base it needs no network for packages.
base_packages=ca-certificates,e2fsprogs,util-linux,mount,iproute2,procps,python3,g++,make,libipsec-mb-dev
# Raise when build_base changes what goes into the base.
base_recipe=1
image=localhost/nraid:lab
network=$lab_id-net
nodes=(alpha beta)
prefix=${subnet%.*/*}
declare -A address=([alpha]=$prefix.2 [beta]=$prefix.3)

export CONTAINERS_CONF=$repo/docker/containers.conf

log() { echo "lab: $*" >&2; }
fail() { echo "lab: error: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }
container() { echo "$lab_id-$1"; }

require_tools() {
  local missing=()
  for tool in podman runc debootstrap node dpkg-query; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ "${#missing[@]}" -eq 0 ] || fail "missing ${missing[*]}; run scripts/setup.sh (installs podman, runc, debootstrap)"
  [ "$(id -u)" -eq 0 ] || fail "the lab needs root (podman with loop devices, FUSE and mounts); found uid $(id -u)"
  dpkg-query -W nodejs >/dev/null 2>&1 ||
    fail "node is not from a Debian package (dpkg-query -W nodejs finds nothing); the base image copies the nodejs package's files"
  for dev in /dev/fuse /dev/loop-control; do
    [ -e "$dev" ] || fail "no $dev on this host: load the module (modprobe ${dev#/dev/})"
  done
}

# Two cached layers, each tagged by a content key (a hash of what goes in):
# the debootstrapped Debian (slow: minutes), and on it the host's Node 20
# (seconds). A new node on the host rebuilds only the second.
debian_key() {
  echo "$suite $mirror $base_packages recipe $base_recipe" | sha256sum | cut -c1-16
}

# The host's Node 20: the binary, its headers (node-gyp builds against them,
# no download) and the global npm and corepack as they are now (npm may have
# been upgraded after the nodejs package was installed).
node_paths=(usr/bin/node usr/include/node usr/lib/node_modules/npm usr/lib/node_modules/corepack usr/bin/npm usr/bin/npx usr/bin/corepack)

base_key() {
  {
    debian_key
    sha256sum "$(readlink -f "$(command -v node)")"
    cat /usr/lib/node_modules/npm/package.json
  } | sha256sum | cut -c1-16
}

build_debian() {
  local tag started rootfs
  tag=localhost/nraid-lab-debian:$(debian_key)
  if podman image exists "$tag"; then
    log "Debian image $tag is cached"
    echo "$tag"
    return
  fi
  started=$(now_ms)
  rootfs=$(mktemp -d /var/tmp/nraid-lab-rootfs.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$rootfs' '$rootfs.log'" RETURN
  mkdir -p "$cache_dir"
  log "debootstrap $suite (minbase + $base_packages) into $rootfs"
  debootstrap --variant=minbase --include="$base_packages" --cache-dir="$cache_dir" \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -20 "$rootfs.log" >&2
    fail "debootstrap failed (log above); check that $mirror is reachable"
  }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf - . | podman import --quiet - "$tag" >/dev/null
  log "Debian image $tag built in $(( ($(now_ms) - started) / 1000 )) s"
  echo "$tag"
}

build_base() {
  local tag debian started context
  tag=localhost/nraid-lab-base:$(base_key)
  if podman image exists "$tag"; then
    log "base image $tag is cached"
    echo "$tag"
    return
  fi
  debian=$(build_debian)
  started=$(now_ms)
  context=$(mktemp -d /var/tmp/nraid-lab-node.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$context'" RETURN
  log "adding the host's Node $(node --version) (npm $(npm --version)) to $debian"
  mkdir "$context/root"
  tar -C / -cf - "${node_paths[@]}" | tar -C "$context/root" -xf -
  printf 'FROM %s\nCOPY root/ /\n' "$debian" >"$context/Containerfile"
  podman build --quiet -t "$tag" "$context" >/dev/null
  log "base image $tag built in $(( ($(now_ms) - started) / 1000 )) s"
  echo "$tag"
}

# The nraid image's content key: the base and every file the build copies.
image_key() {
  {
    echo "$1"
    (cd "$repo" && find package.json package-lock.json binding.gyp native tsconfig.json src bin \
      docker/Dockerfile docker/install-missing.sh docker/entrypoint.sh docker/r0.toml -type f -print0 |
      sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-16
}

build_image() {
  local base started key
  base=$(build_base)
  key=$(image_key "$base")
  if podman image exists "$image-$key"; then
    log "image $image-$key is cached"
    podman tag "$image-$key" "$image"
    return
  fi
  started=$(now_ms)
  log "podman build $image FROM $base"
  # The build stage runs npm ci: the only network use of the build (the npm
  # registry, as scripts/setup.sh does on the host).
  local ca=()
  if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -r "$NODE_EXTRA_CA_CERTS" ]; then
    # The host reaches the registry through a proxy with its own CA: lend the
    # build that CA file (a build-time mount: not in any layer).
    ca=(-v "$NODE_EXTRA_CA_CERTS:/run/nraid-lab-ca.crt:ro" --build-arg NODE_EXTRA_CA_CERTS=/run/nraid-lab-ca.crt)
  fi
  podman build --quiet --format docker --network=host --build-arg BASE_IMAGE="$base" "${ca[@]}" \
    -f "$repo/docker/Dockerfile" -t "$image-$key" -t "$image" "$repo" >/dev/null
  log "image $image built in $(( ($(now_ms) - started) / 1000 )) s"
}

# Loop devices: the container gets /dev/loop-control and /dev/fuse, and may
# create block nodes of major 7 (loop) itself: nraid mknods /dev/loopN from
# /sys/block/loopN/dev when the node is missing (loop devices appear in the
# host's devtmpfs, not in a container's /dev).
# No healthcheck timers: podman runs them through systemd, which this host
# has not; lab.sh polls the same `nraid status --json` instead. nofile: podman
# would raise it past this host's hard limit, which runc may not do here.
run_node() {
  local node=$1 peer
  [ "$node" = alpha ] && peer=beta || peer=alpha
  podman volume exists "$lab_id-$node-disk" || podman volume create "$lab_id-$node-disk" >/dev/null
  podman run -d --name "$(container "$node")" --hostname "$node" \
    --network "$network" --ip "${address[$node]}" --add-host "$peer:${address[$peer]}" \
    --cap-add SYS_ADMIN --cap-add MKNOD --cap-add SYS_RESOURCE --cap-add IPC_LOCK \
    --device /dev/fuse --device /dev/loop-control --device-cgroup-rule 'b 7:* rwm' \
    --ulimit host --security-opt label=disable \
    -v "$lab_id-$node-disk:/var/lib/nraid" \
    --no-healthcheck \
    "$image" >/dev/null
}

lab_up() {
  build_image
  podman network exists "$network" ||
    podman network create --internal --subnet "$subnet" "$network" >/dev/null
  for node in "${nodes[@]}"; do run_node "$node"; done
  log "alpha (${address[alpha]}) and beta (${address[beta]}) are running on $network"
}

# nraid status --json of a node, one field (a dotted path) printed.
status_field() {
  podman exec "$(container "$1")" nraid status --json 2>/dev/null |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let v=JSON.parse(s);for(const k of process.argv[1].split("."))v=v?.[k];console.log(v)})' "$2"
}

# Waits until `status_field node field` prints `want` (up to $4 s, default 60).
wait_for() {
  local node=$1 field=$2 want=$3 deadline=$(( $(date +%s) + ${4:-60} )) got=
  while :; do
    got=$(status_field "$node" "$field" || true)
    [ "$got" = "$want" ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] ||
      fail "$node: expected $field $want within ${4:-60} s, found '${got:-no status}'; see podman logs $(container "$node")"
    sleep 0.5
  done
}

on() { local node=$1; shift; podman exec "$(container "$node")" "$@"; }

scenario() {
  local started sum_alpha sum_beta switch_ms
  started=$(now_ms)
  wait_for alpha connection Connected
  wait_for beta connection Connected
  log "connected; alpha becomes Primary (a new pair: --force, beta receives a full sync)"
  on alpha nraid primary --force >/dev/null
  wait_for beta disk UpToDate 120
  log "writing a filesystem and 8 MiB of random data through alpha"
  on alpha mkfs.ext4 -q /dev/nraid/r0
  on alpha mkdir -p /mnt/r0
  on alpha mount /dev/nraid/r0 /mnt/r0
  on alpha sh -c 'head -c 8M /dev/urandom >/mnt/r0/data && sync'
  sum_alpha=$(on alpha sha256sum /mnt/r0/data | cut -d' ' -f1)
  on alpha umount /mnt/r0
  log "switchover"
  switch_ms=$(now_ms)
  on alpha nraid switchover >/dev/null
  wait_for beta role Primary 30
  switch_ms=$(( $(now_ms) - switch_ms ))
  on beta mkdir -p /mnt/r0
  on beta mount /dev/nraid/r0 /mnt/r0
  sum_beta=$(on beta sha256sum /mnt/r0/data | cut -d' ' -f1)
  on beta umount /mnt/r0
  [ "$sum_beta" = "$sum_alpha" ] ||
    fail "beta's /mnt/r0/data differs from what alpha wrote: expected sha256 $sum_alpha, found $sum_beta"
  [ "$(status_field alpha role)" = Secondary ] || fail "alpha should be Secondary after the switchover, found $(status_field alpha role)"
  log "beta is Primary and holds alpha's data (sha256 $sum_alpha); switchover took $switch_ms ms"
  echo "scenario_ms=$(( $(now_ms) - started )) switchover_ms=$switch_ms sha256=$sum_beta"
}

# Removes the lab: nodes down (which detaches their loop devices), containers,
# network, volumes; then any loop device a container made that is still
# attached to a lab file (a node killed before `nraid down`).
lab_down() {
  local loops=() node name
  for node in "${nodes[@]}"; do
    name=$(container "$node")
    podman container exists "$name" || continue
    if [ "$(podman inspect -f '{{.State.Running}}' "$name")" = true ]; then
      # The container's /dev holds only the loop nodes nraid made in it.
      mapfile -t -O "${#loops[@]}" loops < <(podman exec "$name" sh -c 'ls /dev/loop[0-9]* 2>/dev/null' || true)
      # The daemon is the container's process: down ends the container too,
      # which may cut the exec session short.
      podman exec "$name" sh -c 'umount /mnt/r0 2>/dev/null; nraid down' >/dev/null 2>&1 ||
        [ "$(podman inspect -f '{{.State.Running}}' "$name")" = false ] ||
        log "$node: nraid down failed (removing the container anyway)"
    fi
    podman rm -f -t 5 "$name" >/dev/null
  done
  podman network exists "$network" && podman network rm -f "$network" >/dev/null
  for node in "${nodes[@]}"; do
    podman volume exists "$lab_id-$node-disk" && podman volume rm -f "$lab_id-$node-disk" >/dev/null
  done
  local loop backing
  for loop in "${loops[@]}"; do
    backing=$(cat "/sys/block/${loop#/dev/}/loop/backing_file" 2>/dev/null || true)
    case "$backing" in
      /run/nraid-lab/* | /var/lib/nraid/*)
        log "detaching $loop (left attached to the lab's $backing)"
        losetup -d "$loop" || log "could not detach $loop: see losetup -l"
        ;;
    esac
  done
  return 0
}

run() {
  local started phase
  started=$(now_ms)
  trap 'lab_down' EXIT
  lab_down
  phase=$(now_ms)
  lab_up
  local up_ms=$(( $(now_ms) - phase ))
  scenario
  phase=$(now_ms)
  trap - EXIT
  lab_down
  log "done in $(( ($(now_ms) - started) / 1000 )) s (image and nodes up: $(( up_ms / 1000 )) s, teardown: $(( ($(now_ms) - phase) / 1000 )) s)"
  echo "lab_ms=$(( $(now_ms) - started )) up_ms=$up_ms"
}

require_tools
case "${1:-run}" in
  run) run ;;
  base) build_base ;;
  image) build_image ;;
  up) lab_up ;;
  scenario) scenario ;;
  down) lab_down ;;
  *) fail "unknown command '$1': expected run, base, image, up, scenario or down" ;;
esac
