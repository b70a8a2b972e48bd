#!/usr/bin/env bash
# Build the nacre guest kernel: an uncompressed ELF `vmlinux` for direct boot,
# from Debian's linux-source-6.1 + `make tinyconfig` + nacre.config +
# patches/*.patch.
#
# Needs, on Debian 12 as root:
#   apt-get install linux-source-6.1 build-essential bc bison flex \
#       libelf-dev libssl-dev cpio
#
# Usage: guest/kernel/build.sh [DEST]
#   Progress goes to stderr; the last stdout line is the cached vmlinux path.
#   With DEST, the vmlinux is also copied (atomically) to DEST.
#
# Cache: ${NACRE_CACHE:-/var/cache/nacre}/kernel/<key>/ holds vmlinux, config,
#   System.map and build.log, where <key> is the sha256 of the linux-source
#   package version, nacre.config, patches/* and this script. A rerun with
#   nothing changed only hashes those files. The patched source and object
#   trees are ${NACRE_CACHE}/kernel/work/{src,build}, shared by all keys and
#   re-patched in place, so changing a patch or the config rebuilds
#   incrementally (kbuild records absolute paths: a moved tree rebuilds fully).
#
# Environment: NACRE_CACHE (cache root), NACRE_JOBS (make -j, default nproc),
#   NACRE_KERNEL_TARBALL (default /usr/src/linux-source-6.1.tar.xz).
set -euo pipefail

readonly pkg=linux-source-6.1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly here
readonly tarball=${NACRE_KERNEL_TARBALL:-/usr/src/${pkg}.tar.xz}
readonly cache_root=${NACRE_CACHE:-/var/cache/nacre}/kernel
readonly jobs=${NACRE_JOBS:-$(nproc)}
readonly fragment=$here/nacre.config
readonly kmake=(make ARCH=x86_64)

log() { printf 'kernel: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# Copy the cached artifact to DEST (if given) and print its path.
finish() {
	local vmlinux=$1 dest=${2:-}
	if [[ -n $dest ]]; then
		mkdir -p "$(dirname "$dest")"
		# An unchanged copy keeps its inode and mtime: VM templates are
		# keyed by them, and stay valid across rebuilds.
		if cmp -s "$vmlinux" "$dest"; then
			log "$dest is up to date"
		else
			cp -f "$vmlinux" "$dest.tmp.$$"
			mv -f "$dest.tmp.$$" "$dest"
			log "copied to $dest"
		fi
	fi
	printf '%s\n' "$vmlinux"
}

# Files a patch modifies, relative to the source root.
patched_files() {
	sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "$@" | sort -u
}

# --- cache key ---------------------------------------------------------------
version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) ||
	die "$pkg is not installed (apt-get install $pkg)"
[[ -f $tarball ]] || die "missing $tarball"
shopt -s nullglob
patches=("$here"/patches/*.patch)
shopt -u nullglob
key=$(
	{
		printf '%s %s\n' "$pkg" "$version"
		for f in "$fragment" "${patches[@]}" "$here/build.sh"; do
			printf '== %s\n' "${f#"$here"/}"
			cat "$f"
		done
	} | sha256sum | cut -d' ' -f1
)
readonly out=$cache_root/$key
dest=${1:-}

if [[ -f $out/vmlinux ]]; then
	log "up to date: $out"
	finish "$out/vmlinux" "$dest"
	exit 0
fi

# --- one build at a time per cache ---------------------------------------------
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
log "waiting for the cache lock" && flock 9
if [[ -f $out/vmlinux ]]; then
	log "built meanwhile: $out"
	finish "$out/vmlinux" "$dest"
	exit 0
fi
mkdir -p "$out"
# One work tree for all keys, at a fixed path: kbuild and objtool record
# absolute paths, so a tree that moved would be rebuilt from scratch.
readonly work=$cache_root/work
readonly tree=$work/src obj=$work/build
readonly list=$work/patched-files
mkdir -p "$work" "$obj"
touch "$list"

# --- stage 1: patched source tree --------------------------------------------
if [[ $(cat "$tree/.nacre-ready" 2>/dev/null) != "$key" ]]; then
	rm -f "$tree/.nacre-ready"
	mapfile -t old <"$list"
	if [[ $(cat "$tree/.nacre-extracted" 2>/dev/null) == "$pkg $version" ]]; then
		if ((${#old[@]})); then
			log "stage 1/4: restoring ${#old[@]} previously patched files from $tarball"
			tar -xJf "$tarball" -C "$tree" --strip-components=1 "${old[@]/#/$pkg/}"
		fi
	else
		log "stage 1/4: extracting $tarball"
		rm -rf "$tree"
		mkdir -p "$tree"
		tar -xJf "$tarball" -C "$tree" --strip-components=1
		printf '%s %s\n' "$pkg" "$version" >"$tree/.nacre-extracted"
	fi
	mapfile -t new < <(if ((${#patches[@]})); then patched_files "${patches[@]}"; fi)
	# Record old+new before patching: an interrupted run restores them all.
	printf '%s\n' "${old[@]}" "${new[@]}" | sed '/^$/d' | sort -u >"$list.tmp"
	mv -f "$list.tmp" "$list"
	for p in "${patches[@]}"; do
		log "applying ${p#"$here"/}"
		patch -d "$tree" -p1 --forward --batch --quiet <"$p" ||
			die "patch ${p#"$here"/} does not apply"
	done
	# Newer than every object: make recompiles files patched now or before.
	for f in "${old[@]}" "${new[@]}"; do
		if [[ -e $tree/$f ]]; then touch "$tree/$f"; fi
	done
	printf '%s\n' "${new[@]}" | sed '/^$/d' >"$list.tmp"
	mv -f "$list.tmp" "$list"
	printf '%s\n' "$key" >"$tree/.nacre-ready"
else
	log "stage 1/4: source tree ready"
fi

# --- stage 2: configuration ----------------------------------------------------
log "stage 2/4: tinyconfig + nacre.config"
mkdir -p "$obj"
"${kmake[@]}" -C "$tree" O="$obj" tinyconfig >"$out/config.log" 2>&1 ||
	die "make tinyconfig failed, see $out/config.log"
cat "$fragment" >>"$obj/.config"
"${kmake[@]}" -C "$tree" O="$obj" olddefconfig >>"$out/config.log" 2>&1 ||
	die "make olddefconfig failed, see $out/config.log"

missing=()
while IFS= read -r line; do
	case $line in
	CONFIG_*=*)
		grep -qxF -- "$line" "$obj/.config" || missing+=("$line (got: $(
			grep -E "^(# )?${line%%=*}[= ]" "$obj/.config" || echo unset
		))")
		;;
	"# CONFIG_"*" is not set")
		sym=${line#\# }
		sym=${sym%% *}
		if grep -qE "^$sym=" "$obj/.config"; then
			missing+=("$line (got: $(grep -E "^$sym=" "$obj/.config"))")
		fi
		;;
	esac
done <"$fragment"
if ((${#missing[@]})); then
	log "error: nacre.config symbols that did not survive olddefconfig:"
	printf '  %s\n' "${missing[@]}" >&2
	exit 1
fi
log "all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set)' "$fragment") nacre.config symbols as requested"

# --- stage 3: compile ------------------------------------------------------------
log "stage 3/4: make -j$jobs vmlinux (log: $out/build.log)"
start=$SECONDS
set +e
"${kmake[@]}" -C "$tree" O="$obj" -j"$jobs" vmlinux 2>&1 |
	tee "$out/build.log" |
	awk '/^  [A-Z]/ { n++; printf "kernel: [%5d] %s\n", n, substr($0, 3); fflush(); next }
	     /^make(\[[0-9]+\])?: (Entering|Leaving)/ { next }
	     { print; fflush() }' >&2
status=${PIPESTATUS[0]}
set -e
((status == 0)) || die "make vmlinux failed (exit $status), see $out/build.log"
log "compiled in $((SECONDS - start)) s"

# --- stage 4: publish ----------------------------------------------------------
log "stage 4/4: publishing to $out"
cp -f "$obj/.config" "$out/config.tmp" && mv -f "$out/config.tmp" "$out/config"
cp -f "$obj/System.map" "$out/System.map.tmp" && mv -f "$out/System.map.tmp" "$out/System.map"
cp -f "$obj/vmlinux" "$out/vmlinux.tmp" && mv -f "$out/vmlinux.tmp" "$out/vmlinux"
finish "$out/vmlinux" "$dest"
