#!/usr/bin/env bash
# Set up and test each tested stack in turn; every stack runs and is reported even when an
# earlier one fails, and the exit status is non-zero if any set-up or test failed.
#
#   bash tools/test_stacks.sh                  # current, then classic (what `make test` runs)
#   bash tools/test_stacks.sh classic          # one stack
#
# PYTEST_ARGS   pytest's options (default: -q --durations=15 -n auto --dist loadfile)
# Each stack's pytest writes a JUnit report to work_dirs/tests/junit-<stack>.xml; the
# summary at the end gives, per stack, the set-up time, the pytest counts and time, and a
# last line `total: N passed, N failed` over both.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ $# -gt 0 ] || set -- current classic
read -r -a PYTEST_OPTS <<<"${PYTEST_ARGS:--q --durations=15 -n auto --dist loadfile}"
REPORTS="$ROOT/work_dirs/tests"
mkdir -p "$REPORTS"

rc=0
summary=()
for stack in "$@"; do
  case "$stack" in
    current) venv=.venv ;;
    classic) venv=.venv-classic ;;
    *) echo "[test_stacks] unknown stack '$stack' (current | classic)" >&2; exit 2 ;;
  esac
  echo "== set-up of the $stack stack ($venv)"
  start=$(date +%s)
  if ! MMSLAB_STACK="$stack" MMSLAB_EXTRAS=deploy,cls bash tools/setup_env.sh; then
    summary+=("$stack: set-up FAILED after $(( $(date +%s) - start )) s; no tests ran")
    rc=1
    continue
  fi
  setup_s=$(( $(date +%s) - start ))
  junit="$REPORTS/junit-$stack.xml"
  rm -f "$junit"
  echo "== pytest on the $stack stack ($venv)"
  start=$(date +%s)
  "$venv/bin/python" -m pytest "${PYTEST_OPTS[@]}" --junitxml="$junit" || rc=1
  wall_s=$(( $(date +%s) - start ))
  counts="$(python3 - "$junit" <<'PY'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as e:
    print(f'no JUnit report ({e.__class__.__name__})')
    sys.exit()
suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ('tests', 'failures', 'errors', 'skipped')}
failed = n['failures'] + n['errors']
print(f"{n['tests'] - failed - n['skipped']} passed, {failed} failed, {n['skipped']} skipped")
PY
)"
  summary+=("$stack: $counts; pytest ${wall_s} s, set-up ${setup_s} s")
done

echo "== summary"
passed=0 failed=0
for line in "${summary[@]}"; do
  echo "$line"
  if [[ "$line" =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
    passed=$(( passed + BASH_REMATCH[1] )); failed=$(( failed + BASH_REMATCH[2] ))
  else  # a set-up that failed, or a pytest that left no report
    failed=$(( failed + 1 ))
  fi
done
echo "total: $passed passed, $failed failed"
exit $rc
