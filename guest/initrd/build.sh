#!/usr/bin/env bash
# Builds the guest initramfs: an UNCOMPRESSED newc cpio holding the agent
# as /init plus the few nodes and mount points it needs.
#
#   guest/initrd/build.sh <agent-binary> <output.cpio>
#
# Uncompressed because the guest kernel unpacks it in emulated kernel mode
# on hosts without VT-x/AMD-V (gzip cost ~40 s there). Deterministic: fixed
# mtimes, sorted entries, owner 0:0, renumbered inodes, so the same agent
# gives the same bytes (and hash). Needs root (mknod) and GNU cpio.
set -euo pipefail

log() { echo "initrd: $*" >&2; }
die() { echo "initrd: error: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: $0 <agent-binary> <output.cpio>"
agent=$1
out=$2
[[ -f $agent && -x $agent ]] || die "agent binary $agent missing or not executable"
command -v cpio >/dev/null || die "cpio not installed (apt-get install cpio)"
[[ $(id -u) -eq 0 ]] || die "must run as root (device nodes need mknod)"

# Fixed timestamp for every entry (overridable the usual way).
epoch=${SOURCE_DATE_EPOCH:-0}

stage=$(mktemp -d "${TMPDIR:-/tmp}/nacre-initrd.XXXXXX")
trap 'rm -rf "$stage"' EXIT

log "staging in $stage"
# Mount points of the agent (see crates/agent/src/init.rs) and /etc.
mkdir -p "$stage"/{dev,proc,sys,run,tmp,etc,root}
chmod 0755 "$stage" "$stage"/{dev,proc,sys,run,etc}
chmod 1777 "$stage/tmp"
chmod 0700 "$stage/root"
# The kernel opens /dev/console for init's stdin/stdout/stderr before any
# devtmpfs is mounted: it must be in the archive.
mknod -m 0600 "$stage/dev/console" c 5 1
mknod -m 0666 "$stage/dev/null" c 1 3
install -m 0755 "$agent" "$stage/init"
# NACRE_INITRD_SHELL=1: the debug console's image (used only while the
# node enables the console; see crates/agent/src/debug_console.rs) also
# holds a static busybox as /bin/sh (applets run without links). Not in
# the default image: every MB of initrd costs ~3 s of emulated kernel
# work per cold boot on hosts without VT-x (../shared/notes/HOST.md).
if [[ ${NACRE_INITRD_SHELL:-0} == 1 ]]; then
    busybox=${BUSYBOX:-/bin/busybox}
    [[ -x $busybox ]] || die "busybox $busybox missing (apt-get install busybox-static)"
    readelf -l "$busybox" | grep -q INTERP && die "busybox $busybox is not static (apt-get install busybox-static)"
    mkdir -p "$stage/bin"
    install -m 0755 "$busybox" "$stage/bin/busybox"
    ln -s busybox "$stage/bin/sh"
fi

find "$stage" -exec touch -h -d "@$epoch" {} +

mkdir -p "$(dirname "$out")"
tmp_out="$(realpath -m "$out").tmp.$$"
log "writing $out"
(
    cd "$stage"
    # Sorted, byte-wise, so the order does not depend on the file system.
    find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible >"$tmp_out"
) || { rm -f "$tmp_out"; die "cpio failed"; }
# The same archive again keeps the old file (inode, mtime): VM templates
# are keyed by them, and stay valid across rebuilds.
if cmp -s "$tmp_out" "$out"; then
    rm -f "$tmp_out"
    log "unchanged"
else
    mv "$tmp_out" "$out"
fi
size=$(stat -c %s "$out")
log "done: $out, $size bytes, sha256 $(sha256sum "$out" | cut -d' ' -f1)"
