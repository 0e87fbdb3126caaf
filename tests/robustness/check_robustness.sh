#!/usr/bin/env bash
# Studies you can trust, through the mhd command line: a faulty plugin crashes only its
# trial; SIGKILL and SIGINT mid-study then --resume finish it without duplicates; a changed
# configuration is re-run; --jobs 2, shards + merge and a second run all give the metrics of a
# single run exactly; merge refuses another study; Slurm scripts; two writers and a reader at once.
# Usage: check_robustness.sh MHD_EXE FAULTY_PLUGIN_DIR
set -uo pipefail
mhd=$1
faulty=$(cd "$2" && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
failures=0
ok() { echo "ok   $1"; }
fail() { echo "FAIL $1"; shift; printf '%s\n' "$@" | head -30; failures=$((failures + 1)); }
sql() { sqlite3 -batch "$1" "$2"; }
# Every metric of every trial, by trial index, except wall-clock timings (step_ms, solver_ms) and the
# peak resident memory (peak_rss_mb).
metrics() {
  sql "$1" "SELECT t.idx, t.status, m.name, m.step, quote(m.value) FROM metrics m JOIN trials t ON t.id = m.trial_id
            WHERE m.name NOT LIKE '%\_ms' ESCAPE '\\' AND m.name NOT IN ('resumed_from_step', 'peak_rss_mb') ORDER BY t.idx, m.name, m.step, m.rowid"
}
wait_for() {  # wait_for FILE SQL MIN: until the query's number reaches MIN (30 s at most)
  for _ in $(seq 300); do
    local n
    n=$(sql "$1" "$2" 2>/dev/null || echo 0)
    [[ ${n:-0} -ge $3 ]] && return 0
    sleep 0.1
  done
  return 1
}

# study NAME OUTPUT SEEDS [extra TOML]: the shared tiny model, 3 steps, 1 thread per trial.
study() {
  cat <<TOML
[study]
name = "$1"
seeds = $3
output = "$2"
threads = 1
plugin_path = ["$faulty"]
TOML
  cat "$(dirname "$0")/../data/studies/tiny_model.toml"
  cat <<TOML
[train]
steps = 3
batch = 4
eval_batches = 1
log_every = 1
$4
TOML
}

# --- 1. crash isolation: segfault, abort and throw fail only their trial; NaN diverges -----------
study crash "$work/crash.sqlite" "[0]" '
[[variant]]
name = "segv"
solver = { plugin = "faulty", fault = "segv" }
[[variant]]
name = "abort"
solver = { plugin = "faulty", fault = "abort" }
[[variant]]
name = "throw"
solver = { plugin = "faulty", fault = "throw" }
[[variant]]
name = "nan"
solver = { plugin = "faulty", fault = "nan", fault_at = 2 }' > "$work/crash.toml"
out=$("$mhd" run "$work/crash.toml" 2>&1)
code=$?
db=$work/crash.sqlite
status() { sql "$db" "SELECT status || ': ' || error FROM trials WHERE variant = '$1'"; }
[[ $code -eq 3 ]] && grep -q "5 trial(s): 1 done, 3 failed, 1 diverged" <<<"$out" \
  && ok "crash: the study goes on past 3 failing trials (exit 3)" || fail "crash: exit $code" "$out"
[[ $(status base) == "done: " ]] && ok "crash: the healthy trial is done" || fail "crash: base" "$(status base)"
grep -q "^failed: crashed: SIGSEGV (Segmentation fault)" <<<"$(status segv)" \
  && ok "crash: segfault -> failed with the signal's name" || fail "crash: segv" "$(status segv)"
grep -q "^failed: crashed: SIGABRT (Aborted)" <<<"$(status abort)" \
  && ok "crash: abort -> failed with the signal's name" || fail "crash: abort" "$(status abort)"
grep -q "^failed: .*failing on purpose at solve 1" <<<"$(status throw)" \
  && ok "crash: throw -> failed with the message" || fail "crash: throw" "$(status throw)"
grep -q "^diverged: .*non-finite at step 2" <<<"$(status nan)" \
  && [[ $(sql "$db" "SELECT value FROM metrics m JOIN trials t ON t.id = m.trial_id WHERE variant = 'nan' AND name = 'diverged_step'") == 2.0 ]] \
  && ok "crash: NaN equilibrium -> diverged at step 2 (across the process boundary)" || fail "crash: nan" "$(status nan)"

# --- 2. a reference run, run twice: identical metrics (reproducibility) -------------------------
study ref "$work/ref.sqlite" "[0, 1]" '
[[variant]]
name = "fp"
solver = { plugin = "fixed_point" }' > "$work/ref.toml"
"$mhd" run "$work/ref.toml" > "$work/ref.log" 2>&1 || fail "ref run" "$(cat "$work/ref.log")"
"$mhd" run "$work/ref.toml" --in-process --out "$work/ref2.sqlite" > /dev/null 2>&1
metrics "$work/ref.sqlite" > "$work/ref.metrics"
metrics "$work/ref2.sqlite" > "$work/ref2.metrics"
[[ $(wc -l < "$work/ref.metrics") -gt 100 ]] && cmp -s "$work/ref.metrics" "$work/ref2.metrics" \
  && ok "reproducible: same seed and configuration (in a trial process, then in-process), every metric identical" \
  || fail "reproducible" "$(diff "$work/ref.metrics" "$work/ref2.metrics" | head)"
env=$(sql "$work/ref.sqlite" "SELECT git_revision != '', torch_version, threads, interop_threads > 0, jobs, device FROM studies")
[[ $env =~ ^1\|1\.[0-9.]+\|1\|1\|1\|cpu$ ]] && ok "study row: git revision, LibTorch version, threads, device ($env)" \
  || fail "study row environment" "$env"

# --- 3. --jobs 2 gives the same trials and metrics -----------------------------------------------
"$mhd" run "$work/ref.toml" --jobs 2 --out "$work/jobs.sqlite" > "$work/jobs.log" 2>&1
metrics "$work/jobs.sqlite" > "$work/jobs.metrics"
cmp -s "$work/ref.metrics" "$work/jobs.metrics" && grep -q "2 at a time, 1 thread(s) each" "$work/jobs.log" \
  && [[ $(sql "$work/jobs.sqlite" "SELECT jobs FROM studies") == 2 ]] \
  && ok "--jobs 2: same metrics as --jobs 1" || fail "--jobs 2" "$(diff "$work/ref.metrics" "$work/jobs.metrics" | head)" "$(cat "$work/jobs.log")"

# --- 4. shards in parallel, merged == the single run ----------------------------------------------
"$mhd" run "$work/ref.toml" --shard 1/2 --out "$work/s1.sqlite" > "$work/s1.log" 2>&1 &
p1=$!
"$mhd" run "$work/ref.toml" --shard 2/2 --out "$work/s2.sqlite" > "$work/s2.log" 2>&1 &
p2=$!
wait $p1 $p2
[[ $(sql "$work/s1.sqlite" "SELECT group_concat(idx) FROM trials") == "0,2" ]] \
  && [[ $(sql "$work/s2.sqlite" "SELECT group_concat(idx) FROM trials") == "1,3" ]] \
  && ok "--shard I/N: trials with index % N == I-1" || fail "shard slices" "$(cat "$work/s1.log" "$work/s2.log")"
out=$("$mhd" merge "$work/merged.sqlite" "$work/s2.sqlite" "$work/s1.sqlite" 2>&1)
metrics "$work/merged.sqlite" > "$work/merged.metrics"
trials_of() { sql "$1" "SELECT idx, variant, seed, config_hash, status FROM trials ORDER BY idx"; }
[[ $(trials_of "$work/merged.sqlite") == "$(trials_of "$work/ref.sqlite")" ]] && cmp -s "$work/ref.metrics" "$work/merged.metrics" \
  && [[ $(sql "$work/merged.sqlite" "SELECT count(*) FROM traces") == $(sql "$work/ref.sqlite" "SELECT count(*) FROM traces") ]] \
  && ok "merge of 2 shards == single run (trials, statuses, metrics, traces)" || fail "merge" "$out" "$(diff "$work/ref.metrics" "$work/merged.metrics" | head)"
"$mhd" report "$work/merged.sqlite" | grep -q "4 trial(s), 4 done" && ok "report reads the merged file" || fail "report merged"
out=$("$mhd" merge "$work/bad.sqlite" "$work/s1.sqlite" "$work/crash.sqlite" 2>&1)
[[ $? -ne 0 ]] && grep -q "crash.sqlite: study 'crash' is not study 'ref'" <<<"$out" \
  && ok "merge refuses another study, naming the file" || fail "merge mismatch" "$out"
sed 's/steps = 3/steps = 2/' "$work/ref.toml" > "$work/ref_changed.toml"
"$mhd" run "$work/ref_changed.toml" --shard 2/2 --out "$work/s2x.sqlite" > /dev/null 2>&1
out=$("$mhd" merge "$work/bad2.sqlite" "$work/s1.sqlite" "$work/s2x.sqlite" 2>&1)
[[ $? -ne 0 ]] && grep -q "s2x.sqlite: study 'ref' was run from another study file" <<<"$out" \
  && ok "merge refuses a shard of a changed study file" || fail "merge changed toml" "$out"
out=$("$mhd" merge "$work/bad3.sqlite" "$work/s1.sqlite" "$work/s1.sqlite" 2>&1)
[[ $? -ne 0 ]] && grep -q "is also in" <<<"$out" && ok "merge refuses a shard given twice" || fail "merge twice" "$out"
out=$("$mhd" run "$work/ref.toml" --shard 3/2 2>&1)
[[ $? -eq 2 ]] && grep -q "1 <= I <= N" <<<"$out" && ok "--shard 3/2 refused" || fail "bad shard" "$out"

# --- 5. Slurm scripts ------------------------------------------------------------------------------
out=$("$mhd" slurm "$work/ref.toml" --shards 3 --out "$work/slurm" --partition short --time 00:30:00 2>&1)
a="$work/slurm/ref.shards.sbatch" m="$work/slurm/ref.merge.sbatch" s="$work/slurm/ref.submit.sh"
grep -q '^#SBATCH --array=1-3$' "$a" && grep -q '^#SBATCH --partition=short$' "$a" && grep -q '^#SBATCH --time=00:30:00$' "$a" \
  && grep -q -- '--shard "${SLURM_ARRAY_TASK_ID}/3" --resume' "$a" && grep -q "merge '$work/slurm/ref.sqlite'" "$m" \
  && grep -q "ref.shard3-of-3.sqlite" "$m" && grep -q -- '--dependency=afterok:' "$s" && bash -n "$a" && bash -n "$m" && bash -n "$s" \
  && ok "slurm: job array of 3 shards + dependent merge" || fail "slurm" "$out" "$(cat "$a" "$m" "$s")"

# --- 6. SIGKILL mid-study, then --resume ------------------------------------------------------------
study slow "$work/slow.sqlite" "[0, 1, 2]" "checkpoint_every = 1" | sed 's/^plugin = "anderson"$/plugin = "faulty"\nsleep_ms = 60/' > "$work/slow.toml"
"$mhd" run "$work/slow.toml" > "$work/kill.log" 2>&1 &
runner=$!
wait_for "$work/slow.sqlite" "SELECT count(*) FROM trials WHERE status = 'done'" 1
# in the middle of the second trial: after its first checkpoint
for _ in $(seq 300); do [[ $(ls "$work/slow.sqlite.checkpoints/"*.pt 2>/dev/null | wc -l) -ge 2 ]] && break; sleep 0.1; done
kill -KILL $runner; wait $runner 2>/dev/null
before=$(sql "$work/slow.sqlite" "SELECT group_concat(status) FROM trials")
done_ids=$(sql "$work/slow.sqlite" "SELECT group_concat(id) FROM trials WHERE status = 'done'")
done_before=$(sql "$work/slow.sqlite" "SELECT group_concat(id || '@' || finished_at) FROM trials WHERE id IN ($done_ids)")
sleep 0.3  # the killed runner's trial process dies with it
out=$("$mhd" run "$work/slow.toml" --resume 2>&1)
code=$?
[[ $code -eq 0 ]] && [[ $before == *running* ]] \
  && [[ $(sql "$work/slow.sqlite" "SELECT count(*), count(DISTINCT idx), sum(status = 'done') FROM trials") == "3|3|3" ]] \
  && [[ $(sql "$work/slow.sqlite" "SELECT count(*) FROM studies") == 1 ]] \
  && [[ $(sql "$work/slow.sqlite" "SELECT group_concat(id || '@' || finished_at) FROM trials WHERE id IN ($done_ids)") == "$done_before" ]] \
  && [[ $(sql "$work/slow.sqlite" "PRAGMA integrity_check") == ok ]] \
  && ok "SIGKILL ($before) + --resume: 3 trials done once, finished ones kept, integrity ok" \
  || fail "SIGKILL resume: exit $code, before: $before" "$out"
grep -q "continues from its checkpoint at step [0-9]" <<<"$out" && ok "SIGKILL + --resume: the killed trial continues from its checkpoint" \
  || fail "no checkpoint resume" "$out"
[[ $(sql "$work/slow.sqlite" "SELECT count(*) FROM metrics WHERE name = 'loss'") == 9 ]] \
  && ok "SIGKILL + --resume: no duplicated metric rows" || fail "duplicated rows" "$(sql "$work/slow.sqlite" "SELECT trial_id, count(*) FROM metrics WHERE name='loss' GROUP BY 1")"
metrics "$work/slow.sqlite" > "$work/slow.metrics"
"$mhd" run "$work/slow.toml" --out "$work/slow_ref.sqlite" > /dev/null 2>&1
metrics "$work/slow_ref.sqlite" > "$work/slow_ref.metrics"
cmp -s "$work/slow.metrics" "$work/slow_ref.metrics" && ok "killed + resumed == uninterrupted run (every metric)" \
  || fail "resumed metrics differ" "$(diff "$work/slow.metrics" "$work/slow_ref.metrics" | head)"

# --- 7. SIGINT: stops after the flush, says how to resume, exit 130 -------------------------------
rm -rf "$work/slow.sqlite"*
"$mhd" run "$work/slow.toml" --jobs 2 > "$work/int.log" 2>&1 &
runner=$!
wait_for "$work/slow.sqlite" "SELECT count(*) FROM trials WHERE status = 'done'" 1
wait_for "$work/slow.sqlite" "SELECT count(*) FROM trials WHERE status = 'running'" 1
sleep 0.4  # in the middle of a trial
kill -INT $runner
wait $runner
code=$?
after=$(sql "$work/slow.sqlite" "SELECT group_concat(status) FROM trials")
[[ $code -eq 130 ]] && grep -q "Resume with:" "$work/int.log" && grep -q "mhd run $work/slow.toml --resume --jobs 2" "$work/int.log" \
  && [[ $after != *running* ]] && [[ $after == *pending* ]] \
  && ok "SIGINT: exit 130, trials back to pending ($after), resume command printed" || fail "SIGINT: exit $code, $after" "$(cat "$work/int.log")"
out=$("$mhd" run "$work/slow.toml" --resume 2>&1)
[[ $? -eq 0 ]] && [[ $(sql "$work/slow.sqlite" "SELECT count(*), sum(status = 'done') FROM trials") == "3|3" ]] \
  && [[ $(sql "$work/slow.sqlite" "SELECT count(*) FROM metrics WHERE name = 'loss'") == 9 ]] \
  && [[ $(sql "$work/slow.sqlite" "PRAGMA integrity_check") == ok ]] \
  && ok "SIGINT + --resume: study finished, nothing duplicated" || fail "SIGINT resume" "$out"

# --- 8. a changed study file on --resume -------------------------------------------------------------
cp "$work/ref.sqlite" "$work/change.sqlite"
sed 's/solver = { plugin = "fixed_point" }/solver = { plugin = "fixed_point", damping = 0.9 }/' "$work/ref.toml" > "$work/change.toml"
printf '[[variant]]\nname = "v3"\nmemory = { size = 4 }\n' >> "$work/change.toml"
out=$("$mhd" run "$work/change.toml" --out "$work/change.sqlite" --resume 2>&1)
grep -q "2 finished trial(s) kept, 0 restarted, 2 re-run because their configuration changed, 2 added" <<<"$out" \
  && grep -q "2 trial(s) re-run because their configuration changed" <<<"$out" \
  && "$mhd" report "$work/change.sqlite" | grep -q "2 trial(s) re-run because their configuration changed" \
  && [[ $(sql "$work/change.sqlite" "SELECT count(*), sum(status = 'done'), sum(config_changes) FROM trials") == "6|6|2" ]] \
  && ok "changed configuration: 2 re-run, 2 added, 2 kept; run and report say so" || fail "changed config" "$out"

# --- 9. two writers on one file and a reader at the same time ------------------------------------------
study w1 "$work/shared.sqlite" "[0, 1]" "" > "$work/w1.toml"
study w2 "$work/shared.sqlite" "[0, 1]" "" > "$work/w2.toml"
"$mhd" run "$work/w1.toml" --jobs 2 > "$work/w1.log" 2>&1 &
p1=$!
"$mhd" run "$work/w2.toml" --jobs 2 > "$work/w2.log" 2>&1 &
p2=$!
reads=0 read_errors=0
while kill -0 $p1 2>/dev/null || kill -0 $p2 2>/dev/null; do
  if [[ -f "$work/shared.sqlite" ]]; then
    if "$mhd" report "$work/shared.sqlite" > "$work/read.log" 2>&1 || grep -q "no study recorded yet" "$work/read.log"; then
      reads=$((reads + 1))
    else
      read_errors=$((read_errors + 1)); cat "$work/read.log"
    fi
  fi
done
wait $p1; c1=$?
wait $p2; c2=$?
[[ $c1 -eq 0 && $c2 -eq 0 && $read_errors -eq 0 && $reads -gt 0 ]] \
  && [[ $(sql "$work/shared.sqlite" "SELECT count(*), sum(status = 'done') FROM trials") == "4|4" ]] \
  && [[ $(sql "$work/shared.sqlite" "PRAGMA integrity_check") == ok ]] \
  && ok "two runners on one file + $reads reports while writing: no corruption" \
  || fail "concurrent writers: $c1 $c2, $read_errors read errors" "$(cat "$work/w1.log" "$work/w2.log")"

echo "$failures failure(s)"
exit $((failures > 0))
