#!/usr/bin/env bash
# Usage: run.sh BUILD_DIR MHD_EXE SOURCE_DIR
# Installs the framework into a temporary prefix, checks that the installed headers are the SDK and
# the kits only, builds the out-of-tree plugin against that install (nothing of the source tree),
# and checks that `mhd plugins` finds it through MHD_PLUGIN_PATH.
set -euo pipefail
build_dir=$1 mhd=$2 src=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
unexpected=$(cd "$work/prefix/include" && find . -type f | grep -v -E '^\./mhd/[a-z_]+\.h$|^\./mhd/kits/[a-z_]+\.h$' || true)
if [ -n "$unexpected" ]; then echo "FAIL: installed headers beyond the SDK and kits: $unexpected"; exit 1; fi
cp -r "$src"/. "$work/src"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$work/src" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -Dmhd_DIR="$work/prefix/lib/cmake/mhd" >/dev/null
cmake --build "$work/build" >/dev/null
listing=$(MHD_PLUGIN_PATH="$work/build/plugins" "$mhd" plugins --kind solver)
echo "$listing"
grep -q "solver echo_solver 1.0.0 - Plain iteration, built out of tree." <<<"$listing"
