#!/usr/bin/env bash
# `make figures`: re-run the cheap measured numbers of docs/benchmarks.md and docs/experiments.md — those
# whose command takes under about a minute on the 2-core development VM — and print each beside the
# value the doc gives, with the command that produced it. The costly ones (the full benchmark tables
# with 10 repetitions, the studies that train for minutes, the lm_bytes decode, data parallel) are
# listed at the end with their commands, not run.
#
# Usage: scripts/figures.sh [BUILD_DIR]   (default: build; needs bench_platform, bench_solvers,
#        bench_scan, bench_step and mhd built there, as `make build` does)
#        FIGURES_TIMEOUT=S limits each command to S seconds (default 180): on a loaded machine 2-thread
#        OpenMP runs can take 100x their idle time (docs/benchmarks.md, "What mhd runs on").
#
# Times depend on the load: the script prints `uptime` before and after and the BLAS and threads
# `mhd --version` reports; docs/benchmarks.md says under which conditions each documented value was
# taken. Evaluation counts of the solver benchmarks are deterministic and should match exactly.
# Each documented value below is checked against the doc's text: a row whose value the doc no longer
# contains is marked "doc changed" (update the table here when a doc is re-measured).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
[[ $build = /* ]] || build=$root/$build
bin=$build/bin
work=$(mktemp -d "${TMPDIR:-/tmp}/mhd_figures.XXXXXX")
trap 'rm -rf "$work"' EXIT

for exe in mhd bench_platform bench_solvers bench_scan bench_step; do
  [[ -x $bin/$exe ]] || { echo "figures: $bin/$exe is not built: run \`make build\` (or pass the build folder)" >&2; exit 2; }
done

# Runs one command (echoed), its stdout to $work/NAME; a failure is reported and the rows that read
# it print "failed".
run() {
  local name=$1; shift
  echo "\$ $*" | sed "s|$root/||g"
  local start=$SECONDS rc
  timeout "${FIGURES_TIMEOUT:-180}" "$@" > "$work/$name" 2> "$work/$name.err"; rc=$?
  if [[ $rc -ne 0 ]]; then
    [[ $rc -eq 124 ]] && echo "  timed out after ${FIGURES_TIMEOUT:-180} s" || echo "  failed (exit $rc): $(tail -1 "$work/$name.err")"
    rm -f "$work/$name"
  fi
  echo "  ($((SECONDS - start)) s)"
}

echo "mhd figures, $(date -u '+%Y-%m-%d %H:%M UTC'), load before: $(uptime | sed 's/.*load average: //')"
"$bin/mhd" --version 2>&1 | head -4 | sed 's/^/  /'
echo

# Google Benchmark's results as JSON in $work/NAME.json (stdout also carries the runtime lines).
gb() { echo "--benchmark_out_format=json" "--benchmark_out=$work/$1.json"; }
run platform_sgemm_2 "$bin/bench_platform" --benchmark_filter=Sgemm $(gb platform_sgemm_2)
run platform_sgemm_1 env OMP_NUM_THREADS=1 "$bin/bench_platform" --benchmark_filter=Sgemm $(gb platform_sgemm_1)
run platform_step "$bin/bench_platform" --benchmark_filter=RecallStep $(gb platform_step)
run solvers env OMP_NUM_THREADS=1 "$bin/bench_solvers" \
  '--benchmark_filter=BM_Solve/(fixed_point|anderson|anderson_lam0|anderson_broyden|neural_ode|broyden|broyden_no_ls|hybrid_alternating|hybrid_simultaneous|hybrid_cascade|lbfgs)/' \
  --benchmark_min_time=0.05 $(gb solvers)
run scan "$bin/bench_scan" \
  '--benchmark_filter=^Forward(Backward)?/(avx2\+fma|avx512)/threads:[12]/B:2/D:512/L:1024/' \
  --benchmark_min_time=0.3 $(gb scan)
run step_2 "$bin/bench_step" 40
run step_1 env OMP_NUM_THREADS=1 "$bin/bench_step" 40
run dynamics_form_run "$bin/mhd" run "$root/studies/dynamics_form.toml" --out "$work/dynamics_form.sqlite"
run dynamics_form "$bin/mhd" report "$work/dynamics_form.sqlite" --csv --metric solver_iters --metric converged \
  --metric backward_iters --metric backward_rel_residual --metric lipschitz_mean
echo "load after: $(uptime | sed 's/.*load average: //')"
echo

ROOT=$root WORK=$work python3 - <<'PY'
import csv, json, os, re

root, work = os.environ["ROOT"], os.environ["WORK"]
docs = {name: open(os.path.join(root, "docs", name)).read() for name in ("benchmarks.md", "experiments.md")}

def load(name):
    path = os.path.join(work, name)
    return open(path).read() if os.path.exists(path) else None

def bench(name):  # a run's --benchmark_out, when the run finished
    text = load(name) is not None and load(name + ".json")
    return {b["name"]: b for b in json.loads(text)["benchmarks"]} if text else None

def find(results, prefix):
    if results is None: return None
    for name, b in results.items():
        if name.startswith(prefix): return b
    return None

def ms(b):  # a benchmark's wall time in milliseconds
    return b and b["real_time"] * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]

def step_table(name):  # bench_step's "| whole step | avx2 | | auto | |"
    text = load(name)
    m = text and re.search(r"\| whole step \| ([0-9.]+) \| \| ([0-9.]+) \|", text)
    return (float(m.group(1)), float(m.group(2))) if m else None

def report(name):  # mhd report --csv: variant,sweep,metric,mean,std,n,final
    text = load(name)
    if not text: return None
    return {(r["variant"], r["metric"]): float(r["mean"]) for r in csv.DictReader(text.splitlines())}

rows = []  # (doc, section, quantity, documented, measured)
def row(doc, section, quantity, documented, measured, check=None):
    # `check`: the text the doc must still contain for `documented` to be current (default: documented).
    current = (check or documented) in docs[doc]
    rows.append((doc, section, quantity, documented + ("" if current else " (doc changed)"), measured))

def fmt(v, spec="{:.3g}"):
    return "failed" if v is None else spec.format(v)

# docs/benchmarks.md, "Platform": OpenBLAS (openmp), 2 and 1 threads.
for threads, name, documented in ((2, "platform_sgemm_2", ("148", "155", "165")), (1, "platform_sgemm_1", ("104", "105", "104"))):
    r = bench(name)
    for n, doc_value in zip((256, 512, 1024), documented):
        b = find(r, f"BM_Sgemm/{n}")
        row("benchmarks.md", "Platform", f"sgemm {n}, {threads} thread(s), GFLOP/s", doc_value,
            fmt(b and b["GFLOP/s"] / 1e9, "{:.0f}"), f"{doc_value} GFLOP/s")
r = bench("platform_step")
everywhere, targets = find(r, "BM_RecallStep/0"), find(r, "BM_RecallStep/1")
row("benchmarks.md", "Platform", "recall step, head everywhere, 2 threads, ms", "568", fmt(ms(everywhere), "{:.0f}"), "568 ms")
row("benchmarks.md", "Platform", "recall step, head at targets, 2 threads, ms", "183", fmt(ms(targets), "{:.0f}"), "183 ms")
row("benchmarks.md", "Platform", "head saving", "3.1x", fmt(everywhere and targets and ms(everywhere) / ms(targets), "{:.1f}x"))

# docs/benchmarks.md, solver tables: evaluation counts (deterministic) and CPU time against fixed point.
cases = ("gaussian", "near_critical", "tanh_critical", "rank_one")
solvers = bench("solvers")
def evals(solver, case):
    b = find(solvers, f"BM_Solve/{solver}/{cases.index(case)}/")
    return b and b["f_evals"]
def cpu_ratio(solver, case):
    b, fp = find(solvers, f"BM_Solve/{solver}/{cases.index(case)}/"), find(solvers, f"BM_Solve/fixed_point/{cases.index(case)}/")
    return b and fp and b["cpu_time"] / fp["cpu_time"]
documented_evals = {  # solver: f evals per case, as the tables give them
    "fixed_point": ("14", "124", "21", "81"),
    "anderson": ("14", "38", "12", "20"),
    "anderson_lam0": ("14", "38", "12", "17"),
    "neural_ode": ("61", "595", "73", "91"),
    "broyden": ("14", "42", "12", "12"),
    "broyden_no_ls": ("14", "33", "12", "13"),
    "anderson_broyden": ("14", "38", "12", "10"),
    "hybrid_alternating": ("14", "124", "21", None),
    "hybrid_simultaneous": ("40", "13110", "62", None),
    "hybrid_cascade": ("17", "127", "24", None),
    "lbfgs": ("31", "250", "42", None),
}
section_of = {"anderson_broyden": "Anderson's fallback to Broyden", "hybrid_alternating": "Hybrid modes",
              "hybrid_simultaneous": "Hybrid modes", "hybrid_cascade": "Hybrid modes", "lbfgs": "Hybrid modes"}
for solver, per_case in documented_evals.items():
    for case, doc_value in zip(cases, per_case):
        if doc_value is None: continue
        label = solver.replace("hybrid_", "hybrid ") + (" (32 fallbacks)" if (solver, case) == ("anderson_lam0", "rank_one") else "")
        row("benchmarks.md", section_of.get(solver, "Neural-ODE and Broyden"), f"{solver} on {case}: f evals", doc_value,
            fmt(evals(solver, case), "{:.0f}"), f"`{case}` | {label} | {doc_value} |")
documented_cpu = {  # CPU time / fixed point, "Neural-ODE and Broyden" (OpenBLAS, 1 thread, load 3.5-4.2)
    "anderson": ("2.17", "0.71", "1.16", "0.67"),
    "neural_ode": ("5.66", "5.49", "4.15", "1.30"),
    "broyden": ("2.62", "0.78", "1.45", "0.37"),
}
for solver, per_case in documented_cpu.items():
    for case, doc_value in zip(cases, per_case):
        row("benchmarks.md", "Neural-ODE and Broyden", f"{solver} on {case}: CPU / fixed point", doc_value,
            fmt(cpu_ratio(solver, case), "{:.2f}"), f"| {doc_value} |")

# docs/benchmarks.md, "Selective scan": 2 / 512 / 1024.
scan = bench("scan")
for kind, label in (("Forward", "forward"), ("ForwardBackward", "forward+backward")):
    documented = {("avx512", 1): "4.19", ("avx512", 2): "2.13", ("avx2+fma", 1): "19.8", ("avx2+fma", 2): "13.1"} \
        if kind == "Forward" else {("avx512", 1): "20.1", ("avx512", 2): "10.4", ("avx2+fma", 1): "60.5", ("avx2+fma", 2): "33.7"}
    for (build, threads), doc_value in documented.items():
        b = find(scan, f"{kind}/{build}/threads:{threads}/B:2/D:512/L:1024/")
        row("benchmarks.md", "Selective scan", f"{label} {build}, {threads} thread(s), ms", doc_value, fmt(ms(b), "{:.3g}"),
            f"{doc_value} ms")

# docs/benchmarks.md, "Profile of a training step": whole step, avx2 build and the default build.
for threads, name, documented in ((2, "step_2", ("52.9", "44.2")), (1, "step_1", ("54.6", "39.7"))):
    t = step_table(name)
    for k, build in enumerate(("avx2", "avx512")):
        row("benchmarks.md", "Profile of a training step", f"whole step, {threads} thread(s), {build} scan, ms",
            documented[k], fmt(t and t[k], "{:.1f}"), f"{documented[k]} ms")

# docs/experiments.md, "The dynamics' form": 3 training steps, 2 seeds.
rep = report("dynamics_form")
def metric(variant, name):
    return rep and rep.get((variant, name))
for variant, values in (("residual", ("50", "0", "50", "0.095", "1.000")), ("theory", ("13", "1", "8", "3.5e-6", "0.50")),
                        ("theory-no-contractive", ("7", "1", "3", "3.2e-6", None))):
    for name, doc_value in zip(("solver_iters", "converged", "backward_iters", "backward_rel_residual", "lipschitz_mean"), values):
        if doc_value is None: continue
        check = {"converged": "of 2"}.get(name, doc_value)
        row("experiments.md", "The dynamics' form", f"{variant}: {name}" + (" (share of trials)" if name == "converged" else ""),
            doc_value, fmt(metric(variant, name)), check)

width = [max(len(r[i]) for r in rows) for i in range(5)]
header = ("doc", "section", "quantity", "documented", "measured now")
width = [max(w, len(h)) for w, h in zip(width, header)]
line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip()
print(line(header))
print(line(tuple("-" * w for w in width)))
for r in rows: print(line(r))
print(f"\n{sum('(doc changed)' in r[3] for r in rows)} documented value(s) no longer in the docs; "
      f"{sum(r[4] == 'failed' for r in rows)} measurement(s) failed.")
PY

cat <<'EOF'

Not re-run here (each takes minutes; the docs give their commands):
  docs/benchmarks.md   full solver tables: bench_solvers --benchmark_repetitions=10 (the section's Reproduce block)
  docs/benchmarks.md   "Recurrent decode": bench_generate on the lm_bytes checkpoint (after mhd run studies/lm_bytes.toml)
  docs/benchmarks.md   "Data-parallel training": no committed command (historical)
  docs/experiments.md  quickstart, baselines, lm_bytes, solvers, capacity, recall, landscape, curriculum,
                       continual, convergence: `mhd run studies/NAME.toml` then the `mhd report` line of each section
EOF
