#!/usr/bin/env bash
# The build is never silently partial: configuring without Qt fails with one line naming the
# packages, unless the viewer is turned off on purpose (-DMHD_BUILD_VIEWER=OFF).
#   check_configure.sh SOURCE_DIR
set -u
src=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(-G Ninja -DCMAKE_DISABLE_FIND_PACKAGE_Qt6=TRUE -DMHD_BUILD_TESTS=OFF -DMHD_BUILD_PLUGINS=OFF)

if cmake -S "$src" -B "$work/no-qt" "${common[@]}" >"$work/no-qt.log" 2>&1; then
  echo "FAIL: configure without Qt succeeded; it must stop"; exit 1
fi
line=$(grep -n "mhd-viewer needs Qt 6" "$work/no-qt.log")
[ -n "$line" ] || { echo "FAIL: no message naming Qt 6"; cat "$work/no-qt.log"; exit 1; }
for word in qt6-charts-dev libqt6opengl6-dev MHD_BUILD_VIEWER=OFF; do
  grep "mhd-viewer needs Qt 6" "$work/no-qt.log" | grep -q -- "$word" ||
    { echo "FAIL: the message line does not name $word"; exit 1; }
done

if ! cmake -S "$src" -B "$work/off" "${common[@]}" -DMHD_BUILD_VIEWER=OFF >"$work/off.log" 2>&1; then
  echo "FAIL: configure with -DMHD_BUILD_VIEWER=OFF failed"; cat "$work/off.log"; exit 1
fi
grep -q "mhd-viewer is off" "$work/off.log" || { echo "FAIL: the off switch is not reported"; exit 1; }
echo "configure: stops in one line without Qt, builds without the viewer when told to"
