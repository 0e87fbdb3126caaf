#!/usr/bin/env bash
# What `mhd run` tells a user is true: the progress line marks an accuracy carried over from an
# earlier evaluation with its step, the run says where checkpoints go, and a results file that
# cannot grow stops the study with one line (no trial failed), after which --resume finishes it.
# The full file is made with MHD_RESULTS_MAX_PAGES (PRAGMA max_page_count), no small disk needed.
# Usage: check_run_output.sh MHD_EXE
set -uo pipefail
mhd=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL $1"; failures=$((failures + 1)); }
ok() { echo "ok   $1"; }

cat > "$work/tiny.toml" <<TOML
[study]
threads = 1  # ctest runs two tests at once: two OpenMP threads each would stall at barriers
name = "run_output"
seeds = [0, 1, 2]
output = "$work/tiny.sqlite"
TOML
cat "$(dirname "$0")/../data/studies/tiny_model.toml" >> "$work/tiny.toml"
printf '[train]\nsteps = 5\nbatch = 4\neval_batches = 1\neval_every = 2\nlog_every = 1\n' >> "$work/tiny.toml"

out=$("$mhd" run "$work/tiny.toml" --only base 2>&1)
# Steps 2 and 4 evaluate (no mark); steps 1 and 3 ... : step 3 shows step 2's accuracy marked (@2).
grep -qE "\[1/3 base seed=0\] step 3/5 +loss [0-9.]+ +eval_acc [0-9.]+ \(@2\) " <<<"$out" && ok progress-marks-carried-accuracy || { fail "progress-marks-carried-accuracy"; echo "$out" | head -20; }
grep -qE "\[1/3 base seed=0\] step 4/5 +loss [0-9.]+ +eval_acc [0-9.]+ +iters" <<<"$out" && ok progress-fresh-accuracy-unmarked || fail progress-fresh-accuracy-unmarked
grep -qE "step 1/5 +loss [0-9.]+ +iters" <<<"$out" && ok progress-no-accuracy-before-the-first-evaluation || fail progress-no-accuracy-before-the-first-evaluation
grep -qx "checkpoints: none (\[train\] checkpoint_every = 0)" <<<"$out" && ok says-no-checkpoints || fail says-no-checkpoints

# A results file of at most 18 pages holds the schema and a few steps, not three trials.
full=$(MHD_RESULTS_MAX_PAGES=18 "$mhd" run "$work/tiny.toml" --out "$work/full.sqlite" 2>"$work/err")
code=$?
last=$(tail -1 "$work/err")
if [[ $code -ne 1 || "$last" != "mhd: error: $work/full.sqlite: disk full: free space, then mhd run --resume" ]]; then
  fail "disk-full-stops-with-one-line: exit $code, last stderr line [$last]"; cat "$work/err" | tail -5
else
  ok disk-full-stops-with-one-line
fi
grep -q "failed in" <<<"$full" && fail "disk-full-fails-no-trial: $(grep 'failed in' <<<"$full" | head -2)" || ok disk-full-fails-no-trial
n_started=$(grep -c "\] start$" <<<"$full")
[[ $n_started -lt 3 ]] && ok disk-full-starts-no-more-trials || fail "disk-full-starts-no-more-trials: $n_started started"

resumed=$("$mhd" run "$work/tiny.toml" --out "$work/full.sqlite" --resume 2>&1)
grep -q "3 trial(s): 3 done, 0 failed, 0 diverged" <<<"$resumed" && ok resume-after-disk-full-finishes || { fail resume-after-disk-full-finishes; echo "$resumed" | tail -5; }

echo "$failures failure(s)"
exit $((failures > 0))
