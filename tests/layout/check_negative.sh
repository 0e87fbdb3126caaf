#!/usr/bin/env bash
# The include check must fail on a tree where core/ includes train/ and a plugin includes core/.
#   check_negative.sh CMAKE CHECK_SCRIPT
set -u
cmake=$1 script=$2
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/framework/core" "$tree/framework/train" "$tree/plugins/memory/leaky"
printf '#include "train/trainer.h"\n' > "$tree/framework/core/model.cpp"
printf '#include "core/model.h"\n' > "$tree/framework/train/trainer.cpp"
printf '#include "mhd/memory.h"\n#include "core/model.h"\n' > "$tree/plugins/memory/leaky/leaky.cpp"
out=$("$cmake" -DSOURCE_DIR="$tree" -P "$script" 2>&1) && { echo "FAIL: the check passed a leaky tree"; exit 1; }
echo "$out" | grep -q "framework/core/model.cpp: core may not include train/trainer.h" || { echo "FAIL: upward include not named"; echo "$out"; exit 1; }
echo "$out" | grep -q "plugins/memory/leaky/leaky.cpp: plugin may not include core/model.h" || { echo "FAIL: plugin include not named"; echo "$out"; exit 1; }
if echo "$out" | grep -q "framework/train/trainer.cpp"; then echo "FAIL: a downward include was reported"; exit 1; fi
echo "the include check reports upward and plugin includes, and only those"
