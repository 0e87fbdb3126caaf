#!/usr/bin/env bash
# Usage: run.sh BUILD_DIR MHD_EXE SOURCE_DIR
# Configures and builds the out-of-tree plugin against the build tree's exported package, then
# checks that `mhd plugins` finds it through MHD_PLUGIN_PATH.
set -euo pipefail
build_dir=$1 mhd=$2 src=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src"/. "$work/src"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$work/src" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -Dmhd_DIR="$build_dir" >/dev/null
cmake --build "$work/build" >/dev/null
listing=$(MHD_PLUGIN_PATH="$work/build/plugins" "$mhd" plugins --kind solver)
echo "$listing"
grep -q "solver echo_solver 1.0.0 - Plain iteration, built out of tree." <<<"$listing"
