#!/usr/bin/env bash
# The end of `make demo`: check the host, then run a container in its own VM
# and show the kernel it sees next to the host's.
set -euo pipefail
NACRE=${NACRE:-/usr/local/bin/nacre}

echo ">> nacre check: this host, the guest image, the VMM"
"$NACRE" check

bundle=$(mktemp -d /tmp/nacre-demo.XXXXXX)
id="demo-$$"
cleanup() {
	"$NACRE" delete --force "$id" >/dev/null 2>&1 || true
	rm -rf "$bundle"
}
trap cleanup EXIT

echo ">> building a busybox bundle in $bundle"
mkdir -p "$bundle/rootfs/bin"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for applet in sh uname echo cat; do ln -s busybox "$bundle/rootfs/bin/$applet"; done
(cd "$bundle" && "$NACRE" spec)
# Not a terminal, and a command that prints the kernel it runs on.
sed -i 's/"terminal": true/"terminal": false/' "$bundle/config.json"
sed -i '/"args": \[/,/\]/c\    "args": ["sh", "-c", "echo \\"inside the container: $(uname -s) $(uname -r)\\""],' \
	"$bundle/config.json"

echo ">> nacre run (boots a VM for the container: tens of seconds where guest kernel mode is emulated)"
start=$(date +%s.%N)
"$NACRE" run --bundle "$bundle" "$id"
end=$(date +%s.%N)
echo "on the host:          $(uname -s) $(uname -r)"
printf 'nacre run took %.1f s\n' "$(echo "$end - $start" | bc)"
