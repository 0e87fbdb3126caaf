#!/usr/bin/env bash
# `make figures` / `make charts` (scripts/charts.sh) on the tiny study that Viewer.TinyStudyExport ran:
# without results/quickstart.sqlite, one line naming it and `make quickstart` (from the script, and from
# make before anything is built); with it, the Makefile's figures target runs the charts script on the
# results folder and then the numbers, and the script draws every results file (shards left out) into a
# folder of its own with nothing cut; a file that is not a results file fails the run with one line.
# Two exports of the tiny study: about 30 s on an idle 2-core machine.
# Usage: check_charts.sh SOURCE_DIR BUILD_DIR TINY_DB OUT_DIR
set -uo pipefail
src=$1 build=$2 tiny=$3 out=$4
rm -rf "$out"
mkdir -p "$out/empty" "$out/results"
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
copy_db() {  # the results file with its WAL, as the viewer reads it
  for ext in "" -wal -shm; do [[ -f $1$ext ]] && cp "$1$ext" "$2$ext"; done
}

# No quickstart results: one line, exit 2, nothing written.
err=$("$src/scripts/charts.sh" "$build" "$out/empty" "$out/empty/figures" 2>&1 >/dev/null); rc=$?
[[ $rc -eq 2 && $(wc -l <<<"$err") -eq 1 && $err == *"quickstart.sqlite not found: run \`make quickstart\` first"* ]] ||
  fail "missing results: exit $rc, '$err'"
[[ -e $out/empty/figures ]] && fail "charts.sh wrote figures without results"
err=$(make -s -C "$src" -n figures BUILD="$build" RESULTS="$out/empty" 2>&1 >/dev/null); rc=$?
[[ $rc -eq 2 && $(wc -l <<<"$err") -eq 1 && $err == *"$out/empty/quickstart.sqlite not found: run \`make quickstart\` first"* ]] ||
  fail "make figures without results: exit $rc, '$err'"

# With results: the figures target draws the charts of that folder, then prints the numbers.
copy_db "$tiny" "$out/results/quickstart.sqlite"
copy_db "$tiny" "$out/results/tiny_ablation.sqlite"
copy_db "$tiny" "$out/results/tiny_ablation.shard1-of-2.sqlite"
plan=$(make -s -C "$src" -n figures BUILD="$build" RESULTS="$out/results" 2>&1); rc=$?
[[ $rc -eq 0 ]] || fail "make -n figures: exit $rc: $plan"
grep -qx "scripts/charts.sh $build $out/results $out/results/figures" <<<"$plan" ||
  fail "make figures does not run scripts/charts.sh on the results folder: $plan"
grep -qx "scripts/figures.sh $build" <<<"$plan" || fail "make figures does not run scripts/figures.sh"

# Drawn: each results file into its own folder, the shard left out; the file that is not a results file
# fails the run (exit 1) with one line naming it, after the others are drawn.
echo "not a results file" > "$out/results/broken.sqlite"
"$src/scripts/charts.sh" "$build" "$out/results" "$out/results/figures" > "$out/charts.log" 2> "$out/charts.err"; rc=$?
[[ $rc -eq 1 ]] || { fail "charts.sh exit $rc (want 1: a broken file):"; cat "$out/charts.log" "$out/charts.err"; }
for f in quickstart/curves_loss quickstart/ablation_loss quickstart/traces_forward quickstart/window \
         tiny_ablation/curves_loss tiny_ablation/ablation_loss; do
  [[ -s $out/results/figures/$f.png ]] || fail "no $f.png"
done
[[ -e $out/results/figures/tiny_ablation.shard1-of-2 ]] && fail "a shard was drawn"
grep -q "^figures: .*broken.sqlite: mhd-viewer: error: " "$out/charts.err" || { fail "broken file message:"; cat "$out/charts.err"; }
grep -q "text cut" "$out/charts.err" && { fail "a text was cut:"; cat "$out/charts.err"; }
grep -qE "^figures: [0-9]+ chart\(s\) from 3 results file\(s\) in .*, 0 with a text cut, 1 export\(s\) failed$" \
  "$out/charts.log" || { fail "summary line:"; cat "$out/charts.log"; }

echo "$failures failure(s)"
exit $((failures > 0))
