#!/usr/bin/env bash
# Where does a guest boot spend its time? Boots the guest under nacre-vmm
# with the VMM's sampling profiler on (NACRE_VMM_PROFILE: the vCPU's
# instruction pointer every 5 ms) and prints the kernel functions seen
# most often, plus the top three per second of boot.
#
#   guest/kernel/profile.sh <vmlinux> <initrd> [nacre-vmm] [extra cmdline]
#
# Needs root or /dev/kvm access, nm (binutils). Kernel addresses are
# resolved against vmlinux's symbols; user-space samples count as [user].
set -euo pipefail

die() { echo "profile: error: $*" >&2; exit 1; }
[[ $# -ge 2 ]] || die "usage: $0 <vmlinux> <initrd> [nacre-vmm] [extra cmdline]"
vmlinux=$1
initrd=$2
vmm=${3:-target/release/nacre-vmm}
extra=${4:-}
[[ -r $vmlinux ]] || die "cannot read $vmlinux"
[[ -r $initrd ]] || die "cannot read $initrd"
[[ -x $vmm ]] || die "no nacre-vmm at $vmm (cargo build --release -p nacre-vmm)"
command -v nm >/dev/null || die "nm not found (apt-get install binutils)"

dir=$(mktemp -d "${TMPDIR:-/tmp}/nacre-profile.XXXXXX")
vmm_pid=
cleanup() {
    [[ -n $vmm_pid ]] && kill "$vmm_pid" 2>/dev/null && wait "$vmm_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

echo "profile: booting (samples in $dir/samples)" >&2
start=$(date +%s%N)
NACRE_VMM_PROFILE=$dir/samples "$vmm" --kernel "$vmlinux" --initrd "$initrd" \
    --serial-log "$dir/console.log" --vsock-uds "$dir/vsock.sock" \
    --api-socket "$dir/api.sock" ${extra:+--cmdline "$extra"} >"$dir/vmm.log" 2>&1 &
vmm_pid=$!
deadline=$((SECONDS + ${NACRE_PROFILE_TIMEOUT:-300}))
until grep -q "nacre-agent: ready" "$dir/console.log" 2>/dev/null; do
    kill -0 "$vmm_pid" 2>/dev/null || { cat "$dir/vmm.log" >&2; die "nacre-vmm exited before the agent was ready"; }
    ((SECONDS < deadline)) || { tail -n 20 "$dir/console.log" >&2; die "no agent ready line within ${NACRE_PROFILE_TIMEOUT:-300} s"; }
    sleep 0.1
done
end=$(date +%s%N)
kill "$vmm_pid"; wait "$vmm_pid" 2>/dev/null || true; vmm_pid=
echo "profile: agent ready after $(( (end - start) / 1000000 )) ms; $(grep -o 'started at.*' "$dir/console.log")" >&2

# Symbols (text only) and samples in one stream sorted by address (16 hex
# digits sort like numbers); each sample belongs to the symbol before it.
# Samples are numbered so the per-second view keeps their order.
{
    nm -n "$vmlinux" | awk '$2 ~ /^[tTwW]$/ { print $1 " S " $3 }'
    awk '{ printf "%s P %d\n", $1, NR }' "$dir/samples"
} | LC_ALL=C sort -k1,1 -s | awk -v per_sec=200 '
    $2 == "S" { sym = $3; next }
    {
        name = ($1 < "ffff000000000000") ? "[user]" : (sym == "" ? "?" : sym)
        total++; count[name]++; at[$3] = name
    }
    END {
        printf "%d samples (~5 ms each)\n", total
        for (n in count) printf "%7d %5.1f%% %s\n", count[n], 100 * count[n] / total, n | "sort -rn | head -40"
        close("sort -rn | head -40")
        print "\nper second (top 3):"
        for (s = 1; s <= total; s += per_sec) {
            delete c
            for (i = s; i < s + per_sec && i <= total; i++) c[at[i]]++
            line = sprintf("%3d s:", (s - 1) / per_sec)
            for (k = 0; k < 3; k++) {
                best = ""; bc = 0
                for (n in c) if (c[n] > bc) { best = n; bc = c[n] }
                if (best == "") break
                line = line sprintf(" %s %d", best, bc); delete c[best]
            }
            print line
        }
    }'
