#!/usr/bin/env bash
# Merges what fuzzing runs found (fuzz/target/corpus/<target>/) into the
# committed seeds (fuzz/corpus/<target>/), keeping the smallest set of
# inputs that reaches the same coverage (libFuzzer -set_cover_merge=1).
#
#   fuzz/cmin.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
	mkdir -p "corpus/$t" "target/corpus/$t"
	new=$(mktemp -d)
	cargo +nightly fuzz run "$t" "$new" "corpus/$t" "target/corpus/$t" -- -set_cover_merge=1 -timeout=20 \
		>"target/cmin-$t.log" 2>&1
	rm -rf "corpus/$t"
	mv "$new" "corpus/$t"
	echo ">> $t: $(ls "corpus/$t" | wc -l) seeds, $(du -sh "corpus/$t" | cut -f1)"
done
