#!/bin/sh
# Copies deploy/scripts/nacre-deploy.sh and deploy/containerd/nacre-runtime.toml
# into the ConfigMaps of deploy/nacre-deploy.yaml and deploy/nacre-cleanup.yaml
# (the test crates/cri-tests/tests/deploy.rs checks they match).
set -eu
cd "$(dirname "$0")/.."
indent() { sed 's/^/    /; s/^    $//' "$1"; }
for f in nacre-deploy.yaml nacre-cleanup.yaml; do
	{
		sed '/^  nacre-deploy.sh: |$/,$d' "$f"
		echo '  nacre-deploy.sh: |'
		indent scripts/nacre-deploy.sh
		echo '  nacre-runtime.toml: |'
		indent containerd/nacre-runtime.toml
		sed -n '/^---$/,$p' "$f" | sed -n '/^---$/,$p'
	} >"$f.new"
	mv "$f.new" "$f"
done
