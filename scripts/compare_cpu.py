#!/usr/bin/env python3
"""ferroconv vs PyTorch on this CPU, forward f32, measured side by side in one go.

Runs, with MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=4294967296 for both
(../shared/bench/pytorch-cpu.md says why):
  ferroconv bench --device cpu --threads T --direction fwd --dtype f32 --json OUT/ours.json
  PYTHON torch_suite.py --threads T --no-bwd --no-bf16 --json OUT/torch.json
then prints  case | ours ms | PyTorch ms | ratio | ours %peak  and the median ratio
(ratio = ours / PyTorch: below 1 is faster than PyTorch).

--rounds R (R > 1) interleaves the two programs case by case, R times over, and
keeps per case each program's median over the rounds: on a shared, noisy
machine a slow minute then hits both programs' timings of a case, not one.

--backward also times the backward pass (ferroconv --direction all; torch_suite.py
without --no-bwd) and adds a table of forward + backward: ferroconv's fwd + bwd
medians against PyTorch's fwdbwd (forward with bias, then grad input, weight
and bias).

The Python interpreter needs torch: --python, else $TORCH_PYTHON, else
.venv-torch/bin/python in the repository. Standard library only otherwise.

Examples:
  scripts/compare_cpu.py                                  # the whole suite, 2 threads
  scripts/compare_cpu.py --cases r50_3x3_64,mbv2_dw_144 --min-time 0.3
  scripts/compare_cpu.py --rounds 3 --backward            # case by case, 3 rounds
  scripts/compare_cpu.py --join ours.json torch.json      # only print the table
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def default_python():
    return os.environ.get("TORCH_PYTHON") or os.path.join(REPO, ".venv-torch", "bin", "python")


def run(cmd, env):
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, env=env, check=True)


def measure(a):
    env = dict(os.environ, **MALLOC_ENV)
    ferroconv = a.ferroconv
    if ferroconv is None:
        run(["cargo", "build", "--release", "--quiet", "--bin", "ferroconv"], env)
        ferroconv = os.path.join(REPO, "target", "release", "ferroconv")
    python = a.python or default_python()
    if not os.path.exists(python):
        sys.exit(f"no Python with torch at {python}: pass --python or set TORCH_PYTHON")
    os.makedirs(a.out_dir, exist_ok=True)
    ours, torch = os.path.join(a.out_dir, "ours.json"), os.path.join(a.out_dir, "torch.json")

    cmd = [ferroconv, "bench", "--device", "cpu", "--threads", str(a.threads),
           "--direction", "all" if a.backward else "fwd", "--dtype", "f32", "--algorithm", a.algorithm,
           "--json", ours]
    tcmd = [python, a.torch_suite, "--threads", str(a.threads), "--no-bf16", "--json", torch]
    if not a.backward:
        tcmd.append("--no-bwd")
    if a.suite:
        cmd += ["--suite", a.suite]
        tcmd += ["--suite", a.suite]
    if a.cases:
        cmd += ["--cases", a.cases]
        tcmd += ["--cases", a.cases]
    if a.min_time:
        cmd += ["--min-time", str(a.min_time)]
        tcmd += ["--target-secs", str(a.min_time)]
    if a.rounds <= 1:
        run(cmd, env)
        run(tcmd, env)
        return ours, torch
    names = a.cases.split(",") if a.cases else \
        [c["name"] for c in json.load(open(a.suite or os.path.join(REPO, "src", "bench", "suite.json")))["cases"]]
    runs = {"ours": [], "torch": []}
    for r in range(a.rounds):
        for name in names:
            for who, base, path in (("ours", cmd, ours), ("torch", tcmd, torch)):
                part = os.path.join(a.out_dir, f"round{r}-{name}-{who}.json")
                args = [x if x != path else part for x in base]
                if "--cases" in args:
                    args[args.index("--cases") + 1] = name
                else:
                    args += ["--cases", name]
                run(args, env)
                runs[who].append(json.load(open(part)))
    merge(runs["ours"], ours, ("name", "direction", "dtype", "algorithm", "threads"), ["median_ms"])
    merge(runs["torch"], torch, ("name", "threads"), ["fwd_ms", "fwdbwd_ms"])
    return ours, torch


def merge(documents, path, key_fields, time_fields):
    """Writes to `path` the first document's meta and one record per key, each
    time field the median over all documents' records with that key."""
    records = {}
    for doc in documents:
        for rec in doc["results"]:
            records.setdefault(tuple(rec.get(f) for f in key_fields), []).append(rec)
    # Each `ferroconv bench` run probes the peak anew, briefly; one disturbed
    # probe would skew its cases' %peak, so every record gets the median probe.
    peaks = [rec["peak_gflops"] for doc in documents for rec in doc["results"] if rec.get("peak_gflops")]
    peak = statistics.median(peaks) if peaks else None
    results = []
    for recs in records.values():
        merged = dict(recs[0])
        if peak:
            merged["peak_gflops"] = peak
        for field in time_fields:
            values = [rec[field] for rec in recs if rec.get(field)]
            if values:
                merged[field] = statistics.median(values)
        if "flops" in merged and merged.get("median_ms"):
            merged["gflops"] = merged["flops"] / merged["median_ms"] / 1e6
            if merged.get("peak_gflops"):
                merged["percent_of_peak"] = 100 * merged["gflops"] / merged["peak_gflops"]
        merged["rounds"] = len(recs)
        results.append(merged)
    merged_doc = dict(documents[0], results=results)
    if peak and isinstance(merged_doc.get("meta"), dict):
        meta = dict(merged_doc["meta"])
        meta["peak"] = dict(meta.get("peak") or {}, gflops=peak)
        merged_doc["meta"] = meta
    json.dump(merged_doc, open(path, "w"), indent=1)


def table(title, rows):
    """rows: (case, ours ms, PyTorch ms, ours %peak or None); prints the table and the median ratio."""
    print(f"\n## {title}")
    print("| case | ours ms | PyTorch ms | ratio | ours %peak |")
    print("|---|---:|---:|---:|---:|")
    ratios = []
    for name, ms, tms, pct in rows:
        ratios.append(ms / tms)
        print(f"| {name} | {ms:.3f} | {tms:.3f} | {ms / tms:.2f} | {'-' if pct is None else f'{pct:.1f}'} |")
    worst = max(range(len(ratios)), key=ratios.__getitem__)
    print(f"\nmedian ratio (ours / PyTorch) over {len(ratios)} cases: {statistics.median(ratios):.2f}; "
          f"max {ratios[worst]:.2f} ({rows[worst][0]})")


def join(ours_path, torch_path, threads, algorithm):
    ours = json.load(open(ours_path))
    torch = json.load(open(torch_path))
    mine = {(r["name"], r["direction"]): r for r in ours["results"]
            if r["dtype"] == "f32" and r["algorithm"] == algorithm and r["threads"] == threads}
    theirs = {r["name"]: r for r in torch["results"] if r["threads"] == threads}
    names = [n for (n, d) in mine if d == "fwd" and theirs.get(n, {}).get("fwd_ms")]
    if not names:
        sys.exit(f"no forward case with {threads} threads and algorithm {algorithm!r} in both files")

    peak = ours["meta"].get("peak") or {}
    print(f"# ferroconv {ours['meta']['version']} vs torch {torch['meta'].get('version')}, "
          f"{threads} threads, f32; FP32 peak {peak.get('gflops', float('nan')):.1f} GFLOP/s "
          f"({peak.get('isa', '?')})")
    table("forward", [(n, mine[n, "fwd"]["median_ms"], theirs[n]["fwd_ms"], mine[n, "fwd"].get("percent_of_peak"))
                      for n in names])

    both = [n for n in names if (n, "bwd") in mine and theirs[n].get("fwdbwd_ms")]
    if both:
        rows = []
        for n in both:
            fwd, bwd = mine[n, "fwd"], mine[n, "bwd"]
            ms = fwd["median_ms"] + bwd["median_ms"]
            pct = None if fwd.get("peak_gflops") is None else \
                100 * (fwd["flops"] + bwd["flops"]) / (ms * 1e6) / fwd["peak_gflops"]
            rows.append((n, ms, theirs[n]["fwdbwd_ms"], pct))
        table("forward + backward (grad input, weight, bias)", rows)

    missing = sorted({n for (n, _) in mine} ^ set(theirs))
    if missing:
        print(f"not in both files: {', '.join(missing)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", help="comma-separated case names (default: the whole suite)")
    ap.add_argument("--suite", help="a suite file (default: ferroconv's built-in suite and torch_suite.py's "
                                    "suite.json, which are the same)")
    ap.add_argument("--min-time", type=float,
                    help="seconds per case for both (ferroconv --min-time, torch --target-secs); "
                         "default: each tool's own")
    ap.add_argument("--backward", action="store_true", help="also compare forward + backward")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with R > 1, run the programs case by case, alternating, R rounds; keep medians")
    ap.add_argument("--algorithm", default="auto", help="ferroconv's --algorithm (default auto)")
    ap.add_argument("--ferroconv", help="the ferroconv binary (default: cargo build --release, then "
                                        "target/release/ferroconv)")
    ap.add_argument("--python", help="a Python with torch (default: $TORCH_PYTHON, else .venv-torch/bin/python)")
    ap.add_argument("--torch-suite", default=os.path.join(REPO, "..", "shared", "bench", "torch_suite.py"))
    ap.add_argument("--out-dir", default=os.path.join(REPO, "target", "compare-cpu"),
                    help="where ours.json and torch.json go")
    ap.add_argument("--join", nargs=2, metavar=("OURS", "TORCH"), help="do not run anything; join these two files")
    a = ap.parse_args()
    ours, torch = a.join if a.join else measure(a)
    join(ours, torch, a.threads, a.algorithm)


if __name__ == "__main__":
    main()
