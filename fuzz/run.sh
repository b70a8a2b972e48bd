#!/usr/bin/env bash
# Builds and runs nacre's fuzz targets (cargo-fuzz, libFuzzer, nightly).
#
#   fuzz/run.sh run   SECONDS [TARGET...]   replay each target's seeds,
#                                           then fuzz it SECONDS
#   fuzz/run.sh smoke SECONDS [TARGET...]   the same from a build meant
#                                           for a short run (make test)
#
# The committed seeds (fuzz/corpus/<target>/) are only read: new inputs
# go to fuzz/target/corpus/<target>/ (git-ignored); `make fuzz-cmin`
# folds them back into the seeds, minimised. Crashes land in
# fuzz/artifacts/<target>/ (git-ignored) and make this script fail.
# Each run's figures (executions, cov, ft, exec/s) are appended to
# fuzz/target/logs/<target>.tsv and printed at the end.
set -euo pipefail

mode=${1:?usage: run.sh run|smoke SECONDS [TARGET...]}
seconds=${2:?usage: run.sh run|smoke SECONDS [TARGET...]}
shift 2
cd "$(dirname "$0")"

if ! rustup toolchain list | grep -q '^nightly'; then
	rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
	echo ">> installing cargo-fuzz"
	cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	mapfile -t targets < <(cargo +nightly fuzz list)
fi

# A smoke run (make test, a clean clone in CI) spends more time building
# than fuzzing: it builds with more codegen units (faster to compile,
# slower to run) in a tree of its own, so campaigns keep theirs.
build=()
if [ "$mode" = smoke ]; then
	build=(--codegen-units 16 --target-dir target/smoke)
fi
# FUZZ_SANITIZER=none builds without AddressSanitizer (in a tree of its
# own): about twice the executions per second for long campaigns. Rust's
# bounds checks, debug assertions and each target's invariants still
# hold; the smoke run and the seed replay in `make test` keep ASan.
sanitizer=${FUZZ_SANITIZER:-address}
if [ "$sanitizer" != address ]; then
	[ "$mode" = smoke ] && { echo "FUZZ_SANITIZER applies to 'run' only" >&2; exit 2; }
	build=(--sanitizer "$sanitizer" --target-dir "target/$sanitizer")
fi

echo ">> building the fuzz targets"
cargo +nightly fuzz build "${build[@]}"

mkdir -p target/logs
summary=()
failed=()
for t in "${targets[@]}"; do
	seeds=corpus/$t
	scratch=target/corpus/$t
	mkdir -p "$seeds" "$scratch" "artifacts/$t"
	# A log of this process's own: two campaigns of one target may run
	# side by side, and each must read its own final figures.
	log=target/logs/$t.$$.log
	flags=(-max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1)
	extra=()
	# The sync ttrpc client's threads outlive a call for a moment: their
	# thread-locals are not leaks of the code under test.
	[ "$t" = agent_reply ] && extra=(-detect_leaks=0)
	# libFuzzer runs every input of the corpus directories before it
	# mutates: the seeds are replayed first, and a crashing seed fails.
	echo ">> $t: $(ls "$seeds" | wc -l) seeds replayed, then fuzzing ${seconds}s"
	start=$(date +%s)
	if ! cargo +nightly fuzz run "${build[@]}" "$t" "$scratch" "$seeds" -- "${flags[@]}" "${extra[@]}" >"$log" 2>&1; then
		tail -60 "$log"
		# Kept: the next run of the target overwrites its .last log.
		cp "$log" "target/logs/$t.failed.$(date +%s)"
		failed+=("$t")
	fi
	took=$(($(date +%s) - start))
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	covft=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
	cov=$(echo "$covft" | awk '{print $2}')
	ft=$(echo "$covft" | awk '{print $4}')
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$mode" "$seconds" \
		"${execs:-0}" "${cov:-?}" "${ft:-?}" "${speed:-0}" "$sanitizer" >>"target/logs/$t.tsv"
	summary+=("$(printf '%-20s %10s execs %8s exec/s  cov %6s  ft %6s  %4ss' \
		"$t" "${execs:-0}" "${speed:-0}" "${cov:-?}" "${ft:-?}" "$took")")
	mv "$log" "target/logs/$t.last"
done

echo ">> fuzz $mode summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
	echo ">> FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
	exit 1
fi
