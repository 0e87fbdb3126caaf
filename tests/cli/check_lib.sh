# What the command-line checks share (sourced): a scratch folder removed at exit, and check(), which
# runs a command and compares its exit code and output with what a user should see.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
check() {  # check NAME EXPECTED_EXIT PATTERN -- command...
  local name=$1 want=$2 pattern=$3
  shift 4
  local out
  out=$("$@" 2>&1)
  local got=$?
  if [[ $got -ne $want ]] || ! grep -qE -- "$pattern" <<<"$out"; then
    echo "FAIL $name: exit $got (want $want), output:"; echo "$out" | head -20
    failures=$((failures + 1))
  else
    echo "ok   $name"
  fi
}
