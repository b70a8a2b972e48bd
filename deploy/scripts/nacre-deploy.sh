#!/bin/sh
# nacre-deploy: installs or removes nacre on a Kubernetes node.
#
# Runs in the nacre-deploy DaemonSet pod (deploy/nacre-deploy.yaml), which
# mounts the node's /usr/local/bin, /usr/local/share/nacre, /etc/containerd
# and /var/lib/nacre under /host and shares the node's PID namespace.
#
#   nacre-deploy.sh install     copy binaries + guest image, patch
#                               containerd's config, restart containerd if
#                               the config changed, then stay running
#   nacre-deploy.sh uninstall   the reverse (refused while nacre pods run)
#
# Both are idempotent: a second run changes nothing and restarts nothing.
# The environment variables below exist for tests and unusual nodes.
set -eu

ARTIFACTS=${NACRE_ARTIFACTS:-/opt/nacre-artifacts}
HOST_BIN=${NACRE_HOST_BIN:-/host/usr/local/bin}
HOST_SHARE=${NACRE_HOST_SHARE:-/host/usr/local/share/nacre}
HOST_CONTAINERD=${NACRE_HOST_CONTAINERD:-/host/etc/containerd}
# The shim's VM templates (NACRE_TEMPLATE_DIR's default).
HOST_TEMPLATES=${NACRE_HOST_TEMPLATES:-/host/var/lib/nacre/templates}
SNIPPET=${NACRE_SNIPPET:-/nacre-deploy/nacre-runtime.toml}
RESTART=${NACRE_RESTART_CMD:-nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd}
STAY=${NACRE_STAY:-1}
PROC=${NACRE_PROC:-/proc}
BINARIES="nacre-vmm nacre containerd-shim-nacre-v2"
GUEST_FILES="vmlinux initrd.cpio"
BEGIN_MARK='# BEGIN nacre (managed by nacre-deploy, do not edit)'
END_MARK='# END nacre'

say() { echo "nacre-deploy: $*"; }
die() { echo "nacre-deploy: error: $*" >&2; exit 1; }

# Replaces dst atomically: a running shim or VMM keeps its old file.
put() {
	[ -f "$1" ] || die "artifact $1 is missing from the installer image"
	cp "$1" "$2.nacre-new"
	chmod "$3" "$2.nacre-new"
	mv -f "$2.nacre-new" "$2"
}

# The config without our block.
without_block() {
	awk -v b="$BEGIN_MARK" -v e="$END_MARK" \
		'$0 == b { skip = 1; next } $0 == e { skip = 0; next } !skip' "$1"
}

# Writes $2 over $1 only when they differ; returns 0 when it changed.
replace_if_changed() {
	if cmp -s "$2" "$1"; then
		rm -f "$2"
		return 1
	fi
	mv -f "$2" "$1"
}

patch_config() {
	cfg=$HOST_CONTAINERD/config.toml
	[ -f "$SNIPPET" ] || die "containerd snippet $SNIPPET is missing"
	mkdir -p "$HOST_CONTAINERD"
	[ -s "$cfg" ] || printf 'version = 2\n' >"$cfg"
	grep -Eq '^[[:space:]]*version[[:space:]]*=[[:space:]]*2[[:space:]]*$' "$cfg" ||
		die "$cfg is not a version 2 containerd config (containerd 1.6/1.7); add deploy/containerd/nacre-runtime.toml by hand"
	[ -e "$cfg.nacre-orig" ] || cp -p "$cfg" "$cfg.nacre-orig"
	without_block "$cfg" >"$cfg.nacre-new"
	if grep -q 'containerd\.runtimes\.nacre[].]' "$cfg.nacre-new"; then
		rm -f "$cfg.nacre-new"
		die "$cfg defines a nacre runtime outside the nacre-deploy block; remove it first"
	fi
	{
		echo "$BEGIN_MARK"
		cat "$SNIPPET"
		echo "$END_MARK"
	} >>"$cfg.nacre-new"
	replace_if_changed "$cfg" "$cfg.nacre-new"
}

unpatch_config() {
	cfg=$HOST_CONTAINERD/config.toml
	[ -f "$cfg" ] || return 1
	without_block "$cfg" >"$cfg.nacre-new"
	rm -f "$cfg.nacre-orig"
	replace_if_changed "$cfg" "$cfg.nacre-new"
}

restart_containerd() {
	say "restarting containerd"
	sh -c "$RESTART" || die "restarting containerd failed ($RESTART)"
}

running_sandboxes() {
	n=0
	for c in "$PROC"/[0-9]*/cmdline; do
		[ -f "$c" ] || continue
		if tr '\0' ' ' 2>/dev/null <"$c" | grep -q '^[^ ]*containerd-shim-nacre-v2 '; then
			n=$((n + 1))
		fi
	done
	echo "$n"
}

install() {
	mkdir -p "$HOST_BIN" "$HOST_SHARE"
	for b in $BINARIES; do put "$ARTIFACTS/bin/$b" "$HOST_BIN/$b" 0755; done
	for f in $GUEST_FILES; do put "$ARTIFACTS/share/$f" "$HOST_SHARE/$f" 0644; done
	say "installed $BINARIES in $HOST_BIN, $GUEST_FILES in $HOST_SHARE"
	# Templates are keyed by the files just replaced: none is usable now.
	# A running VM keeps its mapping; a template being made fails and
	# that sandbox boots cold.
	rm -rf "$HOST_TEMPLATES"
	if patch_config; then
		restart_containerd
	else
		say "containerd config already has the nacre runtime"
	fi
	say "done"
}

uninstall() {
	n=$(running_sandboxes)
	[ "$n" -eq 0 ] || die "$n nacre sandbox shim(s) still run on this node; delete the nacre pods first"
	if unpatch_config; then
		restart_containerd
	fi
	for b in $BINARIES; do rm -f "$HOST_BIN/$b"; done
	for f in $GUEST_FILES; do rm -f "$HOST_SHARE/$f"; done
	rmdir "$HOST_SHARE" 2>/dev/null || true
	rm -rf "$HOST_TEMPLATES"
	rmdir "$(dirname "$HOST_TEMPLATES")" 2>/dev/null || true
	say "removed"
}

case "${1:-}" in
install) install ;;
uninstall) uninstall ;;
*) die "usage: $0 install|uninstall" ;;
esac

# A DaemonSet pod must keep running; sleep until the pod is deleted.
if [ "$STAY" = 1 ]; then
	trap 'exit 0' TERM INT
	while :; do sleep 3600 & wait $!; done
fi
