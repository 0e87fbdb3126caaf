#!/usr/bin/env bash
# mhd-viewer's probe page end to end: a real tiny study with [probes.convergence] (2 training steps),
# exported offscreen into OUT_DIR/png; test_viewer_probes then inspects the PNGs.
# Usage: export_probes.sh MHD_EXE VIEWER_EXE OUT_DIR
set -uo pipefail
mhd=$1 viewer=$2 out=$3
rm -rf "$out"
mkdir -p "$out/png"
cat > "$out/probes.toml" <<TOML
[study]
name = "viewer_probes"
output = "$out/probes.sqlite"
threads = 1
TOML
cat "$(dirname "$0")/../data/studies/tiny_model.toml" >> "$out/probes.toml"
cat >> "$out/probes.toml" <<TOML
[train]
steps = 2
batch = 4
eval_every = 0
eval_batches = 1
log_every = 0
[probes.convergence]
batches = 1
iterations = 6
return_iterations = 6
power_iterations = 5
curves = 3
TOML
"$mhd" run "$out/probes.toml" > "$out/run.log" 2>&1 || { echo "FAIL mhd run:"; tail -20 "$out/run.log"; exit 1; }
"$viewer" "$out/probes.sqlite" --export "$out/png" > "$out/export.log" 2>&1 ||
  { echo "FAIL mhd-viewer --export:"; cat "$out/export.log"; exit 1; }
for f in energy_along_iterations lipschitz return_ratio lyapunov_log_distance; do
  grep -qx "$out/png/probe_convergence_$f.png" "$out/export.log" || { echo "FAIL export did not list probe_convergence_$f.png"; exit 1; }
done
echo "ok"
