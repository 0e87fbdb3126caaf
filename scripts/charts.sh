#!/usr/bin/env bash
# `make figures` (first part) and `make charts`: the charts of the studies' results as PNGs, one folder per
# results file, drawn by `mhd-viewer --export` (README, "Looking at results": 1200x800, legends and
# category labels laid out so that no text is cut, metrics constant over the study left out).
#
# Usage: scripts/charts.sh [BUILD_DIR] [RESULTS_DIR] [OUT_DIR]
#        (defaults: build, results, results/figures; relative paths are from the repository root;
#        results/ is ignored by git, so the charts are too)
#
# RESULTS_DIR/quickstart.sqlite is required (`make quickstart` writes it): without it this is one line
# on stderr and exit 2. Every other RESULTS_DIR/NAME.sqlite (a study run with its default output, e.g.
# `mhd run studies/ablation.toml`) is drawn too, into OUT_DIR/NAME/; shards (NAME.shardI-of-N.sqlite)
# are left out, their merge is drawn. Exit 1 when an export fails; a text the viewer had to cut is
# reported on stderr by the viewer and counted in the summary line.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
abs() { [[ $1 = /* ]] && echo "$1" || echo "$root/$1"; }
build=$(abs "${1:-build}")
results=$(abs "${2:-results}")
out=$(abs "${3:-results/figures}")
viewer=$build/bin/mhd-viewer
rel() { echo "${1#"$root"/}"; }

if [[ ! -f $results/quickstart.sqlite ]]; then
  echo "figures: $(rel "$results")/quickstart.sqlite not found: run \`make quickstart\` first (it trains studies/quickstart.toml and writes it)" >&2
  exit 2
fi
if [[ ! -x $viewer ]]; then
  echo "figures: $(rel "$viewer") is not built: run \`make build\` (or pass the build folder); configure without -DMHD_BUILD_VIEWER=OFF" >&2
  exit 2
fi

files=("$results/quickstart.sqlite")
for f in "$results"/*.sqlite; do
  [[ $f == "$results/quickstart.sqlite" || $(basename "$f") == *.shard*-of-*.sqlite ]] && continue
  files+=("$f")
done

mkdir -p "$out" || exit 2
failed=0 cut=0 total=0
for f in "${files[@]}"; do
  name=$(basename "$f" .sqlite)
  dir=$out/$name
  rm -rf "$dir"
  if ! "$viewer" "$f" --export "$dir" > "$dir.log" 2> "$dir.err"; then
    echo "figures: $(rel "$f"): $(tail -1 "$dir.err")" >&2
    failed=$((failed + 1))
  else
    n=$(grep -c '\.png$' "$dir.log")
    c=$(grep -c 'text cut' "$dir.err")
    total=$((total + n)) cut=$((cut + c))
    echo "$(rel "$dir")/: $n chart(s) of $(rel "$f")$([[ $c -gt 0 ]] && echo ", $c with a text cut")"
    cat "$dir.err" >&2
  fi
  rm -f "$dir.log" "$dir.err"
done
echo "figures: $total chart(s) from ${#files[@]} results file(s) in $(rel "$out")/, $cut with a text cut, $failed export(s) failed"
exit $((failed > 0))
