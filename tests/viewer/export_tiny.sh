#!/usr/bin/env bash
# mhd-viewer end to end: run a real tiny study (2 variants x 2 sweep points x 2 seeds, 4 steps), export
# every chart offscreen into OUT_DIR (checked by test_viewer_export), and check the command line's
# exit codes and one-line errors, the export options (--metric, --all-metrics, --log-y, --smooth,
# --keep-constant)
# and that nothing drawn was cut (mhd-viewer warns when Qt elides a text).
# Usage: export_tiny.sh MHD_EXE VIEWER_EXE OUT_DIR
set -uo pipefail
mhd=$1 viewer=$2 out=$3
rm -rf "$out"
mkdir -p "$out/png"
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

cat > "$out/tiny.toml" <<TOML
[study]
threads = 1  # ctest runs two tests at once: two OpenMP threads each would stall at barriers
name = "viewer_tiny"
description = "mhd-viewer's test study"
seeds = [0, 1]
output = "$out/tiny.sqlite"
TOML
cat "$(dirname "$0")/../data/studies/tiny_model.toml" >> "$out/tiny.toml"
cat >> "$out/tiny.toml" <<TOML
[train]
steps = 4
batch = 4
eval_every = 2
eval_batches = 1
log_every = 1
[[variant]]
name = "fixed_point"
solver = { plugin = "fixed_point" }
[sweep]
"memory.size" = [4, 8]
TOML

if ! "$mhd" run "$out/tiny.toml" > "$out/run.log" 2>&1; then
  fail "mhd run:"; tail -20 "$out/run.log"
fi
grep -q "8 trial(s): 8 done" "$out/run.log" || { fail "expected 8 done trials:"; tail -5 "$out/run.log"; }

if ! "$viewer" "$out/tiny.sqlite" --export "$out/png" > "$out/export.log" 2>&1; then
  fail "mhd-viewer --export exited non-zero:"; cat "$out/export.log"
fi
for f in curves_loss ablation_loss scaling_memory.size_loss traces_forward traces_backward window; do
  grep -qx "$out/png/$f.png" "$out/export.log" || fail "export did not list $f.png"
done
# Metrics with one value over the study are skipped by default, kept with --keep-constant.
for f in curves_lr curves_chance_accuracy ablation_solver_tol; do
  grep -qx "$out/png/$f.png" "$out/export.log" && fail "constant metric exported: $f.png"
done
# By default only the headline metrics: grad_norm varies but is not one of them.
grep -qx "$out/png/curves_grad_norm.png" "$out/export.log" && fail "a metric that is not a headline one was exported by default"
grep -qE "^[0-9]+ chart\(s\) written to $out/png$" "$out/export.log" || fail "no summary line in the export output"
grep -q "warning" "$out/export.log" && { fail "export warned (text cut?):"; grep warning "$out/export.log"; }

# --metric (comma list and repeated), --log-y, --smooth: only those metrics' charts.
if ! "$viewer" "$out/tiny.sqlite" --export "$out/png_options" --metric loss,lr --metric grad_norm --log-y \
     --smooth 0.5 > "$out/export_options.log" 2>&1; then
  fail "export with options exited non-zero:"; cat "$out/export_options.log"
fi
for f in curves_loss curves_lr curves_grad_norm ablation_grad_norm traces_forward window; do
  grep -qx "$out/png_options/$f.png" "$out/export_options.log" || fail "--metric export did not list $f.png"
done
grep -q "curves_rel_residual\|curves_task_loss" "$out/export_options.log" && fail "--metric did not filter"
"$viewer" "$out/tiny.sqlite" --export "$out/png_kept" --keep-constant --all-metrics > "$out/export_kept.log" 2>&1 ||
  fail "--keep-constant exited non-zero"
grep -qx "$out/png_kept/curves_lr.png" "$out/export_kept.log" || fail "--keep-constant --all-metrics did not draw lr"
"$viewer" "$out/tiny.sqlite" --export "$out/png_all" --all-metrics > "$out/export_all.log" 2>&1 ||
  fail "--all-metrics exited non-zero"
grep -qx "$out/png_all/curves_grad_norm.png" "$out/export_all.log" || fail "--all-metrics did not draw grad_norm"
grep -qx "$out/png_all/curves_lr.png" "$out/export_all.log" && fail "--all-metrics drew a constant metric"
[[ $(grep -c '\.png$' "$out/export_all.log") -gt $(grep -c '\.png$' "$out/export.log") ]] ||
  fail "--all-metrics drew no more charts than the default"

# Bad export options: one line (did you mean), exit 2, before anything is drawn.
err=$("$viewer" "$out/tiny.sqlite" --export "$out/none" --metric losss 2>&1 >/dev/null); rc=$?
[[ $rc -eq 2 && $(wc -l <<<"$err") -eq 1 && $err == *"unknown metric 'losss'; did you mean 'loss'?"* ]] ||
  fail "unknown metric: exit $rc, $err"
[[ -e "$out/none" ]] && fail "an export with a bad metric wrote files"
err=$("$viewer" "$out/tiny.sqlite" --export "$out/none" --smooth 1.5 2>&1 >/dev/null); rc=$?
[[ $rc -eq 2 && $err == *"--smooth expects an averaging weight in [0, 1)"* ]] || fail "--smooth 1.5: exit $rc, $err"
err=$("$viewer" "$out/tiny.sqlite" --log-y 2>&1 >/dev/null); rc=$?
[[ $rc -eq 2 && $err == *"go with --export"* ]] || fail "--log-y without --export: exit $rc, $err"

# Not a results file: one line on stderr, exit 2.
err=$("$viewer" "$out/tiny.toml" --export "$out/none" 2>&1 >/dev/null); rc=$?
[[ $rc -eq 2 ]] || fail "not-a-results-file: exit $rc (want 2)"
[[ $(wc -l <<<"$err") -eq 1 && $err == "mhd-viewer: error: "*"not an mhd results file"* ]] ||
  fail "not-a-results-file message: $err"
err=$("$viewer" "$out/tiny.sqlite" --study 42 --export "$out/none" 2>&1 >/dev/null); rc=$?
[[ $rc -eq 2 && $err == *"no study 42"* ]] || fail "unknown study: exit $rc, $err"
"$viewer" --bogus >/dev/null 2>&1; rc=$?
[[ $rc -eq 2 ]] || fail "unknown option: exit $rc (want 2)"

echo "$failures failure(s)"
exit $((failures > 0))
