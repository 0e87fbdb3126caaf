#!/usr/bin/env bash
# `mhd meta-train` as a user meets it: a tiny run writes a checkpoint, meta-train trains an
# accelerator on it and prints iterations to tol for anderson, the untrained and the trained
# accelerator, the file it wrote drives a study's [solver] plugin = "learned"; with --exit-predictor it
# fits early_exit's convergence predictor and that file drives a study; bad input fails in one line
# with exit 2. Usage: check_meta_train.sh MHD_EXE
set -uo pipefail
mhd=$1
source "$(dirname "$0")/check_lib.sh"

# The tiny model's tables, its forward solve given room to reach tol.
tables=$(sed -e 's/^max_iter = 5$/max_iter = 40/' "$(dirname "$0")/../data/studies/tiny_model.toml")
printf '[study]\nname = "cli_meta"\nthreads = 1\noutput = "%s/run.sqlite"\n%s\n[train]\nsteps = 2\nbatch = 4\neval_batches = 1\ncheckpoint_every = 2\n' \
  "$work" "$tables" > "$work/run.toml"
check run 0 "1 done" -- "$mhd" run "$work/run.toml"
ckpt=$(ls "$work"/run.sqlite.checkpoints/*.pt 2>/dev/null | head -1)
if [[ -z "$ckpt" ]]; then
  echo "FAIL checkpoint: the run wrote no checkpoint"; failures=$((failures + 1))
else
  check meta_train 0 "learned, trained: +[0-9.]+ iterations" -- "$mhd" meta-train "$ckpt" --out "$work/acc.pt" --steps 5 --batches 2 --eval-batches 1 --hidden 8
  check meta_train_reports_anderson 0 "anderson: +[0-9.]+ iterations \([0-9.]+% at tol" -- "$mhd" meta-train "$ckpt" --out "$work/acc.pt" --steps 2 --batches 1 --eval-batches 1 --hidden 8
  [[ -f "$work/acc.pt" ]] && echo "ok   accelerator_file" || { echo "FAIL no accelerator file"; failures=$((failures + 1)); }
  # The file drives a study's solver.
  sed -e "s#^plugin = \"anderson\"#plugin = \"learned\"\npath = \"$work/acc.pt\"#" -e "s#run.sqlite#learned.sqlite#" "$work/run.toml" > "$work/learned.toml"
  check run_with_learned 0 "1 done" -- "$mhd" run "$work/learned.toml"
  check missing_out 2 "out" -- "$mhd" meta-train "$ckpt"
  # The early_exit predictor: fitted on anderson's recorded trajectories, measured, and driving a study.
  check exit_predictor 0 "with the predictor: +[0-9.]+ sample evaluations" -- "$mhd" meta-train "$ckpt" --exit-predictor \
    --inner anderson --out "$work/exit.pt" --steps 20 --batches 2 --eval-batches 1 --hidden 4
  sed -e "s#^plugin = \"anderson\"#plugin = \"early_exit\"\ninner = \"anderson\"\npredictor = \"exit\"\npredictor_path = \"$work/exit.pt\"#" \
    -e "s#run.sqlite#exit.sqlite#" "$work/run.toml" > "$work/exit.toml"
  check run_with_exit_predictor 0 "1 done" -- "$mhd" run "$work/exit.toml"
  check exit_predictor_unknown_inner 2 "andersen" -- "$mhd" meta-train "$ckpt" --exit-predictor --inner andersen --out "$work/x.pt"
fi
check missing_checkpoint 2 "^mhd: error: checkpoint $work/none.pt: no such file" -- "$mhd" meta-train "$work/none.pt" --out "$work/x.pt"
# A study naming a missing accelerator file fails validation in one line naming it.
sed -e "s#^plugin = \"anderson\"#plugin = \"learned\"\npath = \"$work/none.pt\"#" "$work/run.toml" > "$work/missing.toml"
check missing_accelerator 2 "$work/none.pt.*does not exist" -- "$mhd" run "$work/missing.toml"
sed -e "s#^plugin = \"anderson\"#plugin = \"early_exit\"\npredictor_path = \"$work/none.pt\"#" -e "s#run.sqlite#none.sqlite#" "$work/run.toml" > "$work/missing_predictor.toml"
check missing_predictor 2 "predictor_path.*$work/none.pt.*does not exist" -- "$mhd" validate "$work/missing_predictor.toml"

[[ $failures -eq 0 ]] && echo "all meta-train checks passed" || echo "$failures meta-train check(s) failed"
exit $(( failures > 0 ))
