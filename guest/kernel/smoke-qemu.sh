#!/usr/bin/env bash
# Boot a nacre guest kernel under QEMU with a tiny busybox initrd and check
# that user space runs (fork/exec, a pipe, system calls) and shuts down.
#
# Usage: guest/kernel/smoke-qemu.sh VMLINUX
#   Exits 0 when the marker line is seen and QEMU exits; non-zero otherwise.
#   Needs busybox-static (/bin/busybox), cpio and qemu-system-x86_64.
#
# Environment:
#   NACRE_SMOKE_KEEP_INITRD=PATH  also keep the test initrd at PATH
#   NACRE_SMOKE_EXTRA_APPEND=...  extra kernel command line arguments
#                                 (e.g. "initcall_debug ignore_loglevel")
#   NACRE_SMOKE_QUIET=0           drop `quiet` from the command line
#   NACRE_SMOKE_TIMEOUT=SECONDS   QEMU timeout (default 300)
#   NACRE_SMOKE_EXIT_GRACE=SECONDS time QEMU gets to exit after the marker
#                                 (default 60)
set -euo pipefail

readonly marker=NACRE-SMOKE-OK
vmlinux=${1:?usage: $0 VMLINUX}
[[ -f $vmlinux ]] || {
	echo "smoke: no such file: $vmlinux" >&2
	exit 2
}
readonly busybox=${BUSYBOX:-/bin/busybox}
readonly qemu=${QEMU:-qemu-system-x86_64}
readonly limit=${NACRE_SMOKE_TIMEOUT:-300}
readonly grace=${NACRE_SMOKE_EXIT_GRACE:-60}

log() { printf 'smoke: %s\n' "$*" >&2; }

# User+system CPU seconds of this shell's waited-for children (bash `times`).
child_cpu() {
	times >"$tmp/times" # in this shell: a subshell would see no children
	sed -n 2p "$tmp/times" | awk '{
		t = 0
		for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); t += p[1] * 60 + p[2] }
		printf "%.1f", t
	}' >"$tmp/cpu"
}

tmp=$(mktemp -d /tmp/nacre-smoke.XXXXXX)
qemu_pid=
cleanup() {
	if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill "$qemu_pid" 2>/dev/null || true
		wait "$qemu_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

# --- initrd: static busybox + /init, uncompressed newc cpio --------------------
root=$tmp/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp}
cp "$busybox" "$root/bin/busybox"
for applet in sh cat echo uname tr wc ls mount true reboot poweroff sleep; do
	ln -s busybox "$root/bin/$applet"
done
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3
cat >"$root/init" <<EOF
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
echo "smoke: kernel \$(uname -r), uptime at /init \$(cat /proc/uptime)"
echo "smoke: pipe says \$(echo hello from a pipe | tr a-z A-Z)"
echo "smoke: /proc has \$(ls /proc | wc -l) entries"
/bin/true && echo "smoke: fork+exec ok"
echo "$marker uptime \$(cat /proc/uptime)"
reboot -f
EOF
chmod 755 "$root/init"
initrd=$tmp/initrd.cpio
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --quiet -o -H newc -0 -R 0:0) >"$initrd"
if [[ -n ${NACRE_SMOKE_KEEP_INITRD:-} ]]; then
	cp "$initrd" "$NACRE_SMOKE_KEEP_INITRD.tmp.$$"
	mv -f "$NACRE_SMOKE_KEEP_INITRD.tmp.$$" "$NACRE_SMOKE_KEEP_INITRD"
	log "initrd kept at $NACRE_SMOKE_KEEP_INITRD"
fi

# --- boot ------------------------------------------------------------------------
append="console=ttyS0 reboot=t panic=-1 mitigations=off nokaslr noxsave"
append+=" clearcpuid=cx16,smap,smep,popcnt pty.legacy_count=0"
[[ ${NACRE_SMOKE_QUIET:-1} == 0 ]] || append+=" quiet"
append+=${NACRE_SMOKE_EXTRA_APPEND:+ $NACRE_SMOKE_EXTRA_APPEND}
cmd=("$qemu" -machine microvm,accel=kvm -cpu qemu64,+x2apic,+xsaveerptr -m 128 -smp 1
	-nodefaults -no-user-config -display none -serial stdio
	-kernel "$vmlinux" -initrd "$initrd" -append "$append" -no-reboot)
log "booting: ${cmd[*]}"
serial=$tmp/serial.log
: >"$serial"
start=$(date +%s.%N)
timeout "$limit" "${cmd[@]}" </dev/null >"$serial" 2>&1 &
qemu_pid=$!

seen=0 marker_at= killed=0
printed=0
while kill -0 "$qemu_pid" 2>/dev/null; do
	# Relay new serial output as it arrives.
	lines=$(wc -l <"$serial")
	if ((lines > printed)); then
		sed -n "$((printed + 1)),${lines}p" "$serial" | sed 's/^/  | /' >&2
		printed=$lines
	fi
	if ((!seen)) && grep -q "^$marker" "$serial"; then
		seen=1
		marker_at=$(date +%s.%N)
	fi
	if ((seen)) && (($(date +%s) - ${marker_at%.*} > grace)); then
		log "qemu still running $grace s after the marker: killing it"
		kill "$qemu_pid" 2>/dev/null || true
		killed=1
	fi
	sleep 0.2
done
wait "$qemu_pid" && status=0 || status=$?
qemu_pid=
end=$(date +%s.%N)
sed -n "$((printed + 1)),\$p" "$serial" | sed 's/^/  | /' >&2
if ((!seen)) && grep -q "^$marker" "$serial"; then
	seen=1
	marker_at=$end
fi

if ((!seen)); then
	log "FAIL: no '$marker' line (qemu exit status $status)"
	exit 1
fi
log "marker after $(echo "$marker_at - $start" | bc) s; qemu exited after $(echo "$end - $start" | bc) s (status $status)"
child_cpu
log "CPU time of qemu (user+sys, mostly emulated guest kernel mode): $(cat "$tmp/cpu") s"
if ((killed || status != 0)); then
	log "FAIL: qemu did not exit by itself after reboot -f (status $status)"
	exit 1
fi
log "PASS"
