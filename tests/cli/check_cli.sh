#!/usr/bin/env bash
# The `mhd` command line as a user meets it: exit codes, one-line errors, listings, a tiny run.
# Usage: check_cli.sh MHD_EXE
set -uo pipefail
mhd=$1
source "$(dirname "$0")/check_lib.sh"

cat > "$work/tiny.toml" <<TOML
[study]
threads = 1  # ctest runs two tests at once: two OpenMP threads each would stall at barriers
name = "cli_tiny"
seeds = [0, 1]
output = "$work/tiny.sqlite"
TOML
cat "$(dirname "$0")/../data/studies/tiny_model.toml" >> "$work/tiny.toml"
cat >> "$work/tiny.toml" <<TOML
[train]
steps = 3
batch = 4
eval_batches = 1
log_every = 1
TOML
sed 's/plugin = "anderson"/plugin = "andersen"/' "$work/tiny.toml" > "$work/bad_plugin.toml"
printf '[study]\nname = "x"\n[task]\nkind = "associative_recall"\nnum_pairs = "four"\n' > "$work/bad_type.toml"
printf '[study\nname = "x"\n' > "$work/bad_syntax.toml"
# Each key valid, together impossible: 12 pairs and 12 queries need 48 positions, not 24.
printf '[study]\nname = "x"\n[task]\nkind = "associative_recall"\nnum_pairs = 12\nseq_len = 24\n' > "$work/cross_key.toml"
{ cat "$work/tiny.toml"; printf '[[variant]]\nname = "nomem"\nmodel = { use_memory = false }\n'
  printf '[[variant]]\nname = "nodeq"\nmodel = { deq = false }\n'; } > "$work/variants.toml"

check validate-ok 0 "ok: study 'cli_tiny', 1 variant\(s\), 2 trial\(s\)" -- "$mhd" validate "$work/tiny.toml"
check plan 0 "^1 +base +- +1 " -- "$mhd" plan "$work/tiny.toml"
# Trials numbered from 0 like trials.idx, with the whole 16-digit config hash.
check plan-from-zero 0 "^0 +base +- +0 +mamba\+hopfield\+anderson [0-9a-f]{16}$" -- "$mhd" plan "$work/tiny.toml"
# Only the components a trial builds: no memory with use_memory = false, the backbone alone without the DEQ.
check plan-no-memory 0 "^2 +nomem +- +0 +mamba\+anderson \(no memory\) [0-9a-f]{16}$" -- "$mhd" plan "$work/variants.toml"
check plan-no-deq 0 "^4 +nodeq +- +0 +mamba \(no DEQ\) [0-9a-f]{16}$" -- "$mhd" plan "$work/variants.toml"
check validate-cross-key 2 "cross_key.toml:6:11: error: task.seq_len = 24 is too short for 12 pairs" -- "$mhd" validate "$work/cross_key.toml"
check run-refuses-cross-key 2 "cross_key.toml:6:11: error: task.seq_len = 24 is too short" -- "$mhd" run "$work/cross_key.toml"
check unknown-plugin 2 "^$work/bad_plugin.toml:[0-9]+:[0-9]+: error: solver.plugin: unknown solver plugin 'andersen'; did you mean 'anderson'\?" -- "$mhd" validate "$work/bad_plugin.toml"
check run-refuses-bad-study 2 "bad_type.toml:5:13: error: task.num_pairs: expected integer" -- "$mhd" run "$work/bad_type.toml"
check syntax-error 2 "bad_syntax.toml:1:[0-9]+: error: " -- "$mhd" validate "$work/bad_syntax.toml"
check missing-study 2 "error: .*nothing.toml" -- "$mhd" validate "$work/nothing.toml"
check plugins 0 "solver anderson .*" -- "$mhd" plugins
check plugins-kind 0 "^backbone mamba " -- "$mhd" plugins --kind backbone
# The parameter table's columns never run together, even for the longest name.
check plugins-columns 0 "^  lipschitz_iterations +integer +default " -- "$mhd" plugins --kind optimization
check bad-kind 2 "kind" -- "$mhd" plugins --kind engine
check run 0 "2 trial\(s\): 2 done, 0 failed, 0 diverged" -- "$mhd" run "$work/tiny.toml"
check run-progress 0 "\[1/2 base seed=0\] step 3/3 +loss" -- "$mhd" run "$work/tiny.toml" --only base
check only-unknown 2 "--only nope: study 'cli_tiny' has no such variant \(variants: base\)" -- "$mhd" run "$work/tiny.toml" --only nope
check report 0 "^base +2 +" -- "$mhd" report "$work/tiny.sqlite"
check report-csv 0 "^variant,sweep,metric,mean,std,n,final$" -- "$mhd" report "$work/tiny.sqlite" --csv
check report-metric 0 "eval_accuracy" -- "$mhd" report "$work/tiny.sqlite" --metric eval_accuracy
check report-unknown-metric 2 "error: .*unknown metric 'lossy'; did you mean 'loss'\?" -- "$mhd" report "$work/tiny.sqlite" --metric lossy
lines=$("$mhd" report "$work/tiny.sqlite" --metric lossy 2>&1 | wc -l)
if [[ $lines -ne 1 ]]; then echo "FAIL report-unknown-metric-one-line: $lines lines"; failures=$((failures + 1)); else echo "ok   report-unknown-metric-one-line"; fi
check report-not-results 2 "not an mhd results file" -- "$mhd" report "$work/tiny.toml"

echo "$failures failure(s)"
exit $((failures > 0))
