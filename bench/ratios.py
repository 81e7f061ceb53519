#!/usr/bin/env python3
"""The one table every bench script feeds: spritedisk against a baseline
measured in the same run, as a ratio, with the goal it is held against.

  bench/ratios.py add OUT --group G --measure M --value V --baseline-value B
                  --unit U --baseline NAME [--lower-better] [--goal-min R | --goal-max V]
  bench/ratios.py finish OUT     # summary.json, the table atop summary.md, plot.png

A ratio always reads "spritedisk's performance as a fraction of the
baseline's": value / baseline for throughputs, baseline / value for times
(--lower-better). 1.0 is as good as the baseline; above 1 is better.
--goal-min holds the ratio to a floor; --goal-max holds the value itself to
a ceiling (e.g. a restore under 1000 ms)."""
import argparse, json, os, platform, subprocess, sys


def record(out, group, measure, value, unit, baseline, baseline_value,
           lower_better=False, goal_min=None, goal_max=None):
    """Appends one row to OUT/ratios.jsonl (also used by report.py)."""
    if value <= 0 or baseline_value <= 0:
        sys.exit(f"ratios: {measure}: value {value} / baseline {baseline_value} is not a measurement")
    ratio = baseline_value / value if lower_better else value / baseline_value
    rec = {
        "group": group, "measure": measure, "value": value, "unit": unit,
        "baseline": baseline, "baseline_value": baseline_value,
        "lower_better": lower_better, "ratio": ratio,
    }
    if goal_min is not None:
        rec["goal"] = f"ratio ≥ {goal_min:g}×"
        rec["met"] = ratio >= goal_min
    if goal_max is not None:
        rec["goal"] = f"≤ {goal_max:g} {unit}"
        rec["met"] = value <= goal_max
    with open(os.path.join(out, "ratios.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"  {group}: {measure}: {value:,.4g} {unit} vs {baseline} {baseline_value:,.4g} -> {ratio:.2f}×", file=sys.stderr)


def machine():
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = next((int(l.split()[1]) // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"host": platform.node(), "cpus": os.cpu_count(), "cpu": cpu, "mem_mib": mem,
            "kernel": platform.release(), "commit": rev,
            "quick": os.environ.get("BENCH_QUICK", "0") == "1"}


SECTIONS = "The sections below give the numbers behind each row."


def fmt(v, unit):
    return f"{v:,.0f} {unit}" if abs(v) >= 100 else f"{v:,.3g} {unit}"


def finish(a):
    path = os.path.join(a.out, "ratios.jsonl")
    recs = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    m = machine()
    summary_path = os.path.join(a.out, "summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    summary.update({"machine": m, "ratios": recs})
    json.dump(summary, open(summary_path, "w"), indent=2)

    rows = [
        "| group | measure | spritedisk | baseline (same run) | ratio | goal |",
        "|---|---|---|---|---|---|",
    ]
    for r in recs:
        goal = r.get("goal", "")
        if goal:
            goal += " ✅" if r["met"] else " ❌ missed"
        rows.append(f"| {r['group']} | {r['measure']} | {fmt(r['value'], r['unit'])} | "
                    f"{r['baseline']}: {fmt(r['baseline_value'], r['unit'])} | {r['ratio']:.2f}× | {goal} |")
    head = [
        f"# spritedisk benchmark — {os.path.basename(os.path.normpath(a.out))}",
        "",
        f"Machine: {m['host']}, {m['cpus']} CPUs ({m['cpu']}), {m['mem_mib']:,} MiB, kernel {m['kernel']}, "
        f"commit {m['commit']}{', quick mode (BENCH_QUICK=1: small sizes, short runs)' if m['quick'] else ''}. "
        "Every baseline is measured in the same run on the same machine. "
        "Ratio: spritedisk's performance as a fraction of the baseline's (throughput / throughput, "
        "or baseline time / spritedisk time); 1.0 = as good as the baseline, above 1 = better.",
        "",
        "![ratios](plot.png)",
        "",
        *rows,
        "",
        SECTIONS,
        "",
    ]
    md_path = os.path.join(a.out, "summary.md")
    rest = open(md_path).read() if os.path.exists(md_path) else ""
    if SECTIONS in rest:  # finished before: replace the table
        rest = rest[rest.index(SECTIONS) + len(SECTIONS) + 1:]
    elif rest.startswith("# "):  # the first section's own title gives way to ours
        rest = "## Host, NBD" + rest[rest.index("\n"):]
    open(md_path, "w").write("\n".join(head) + rest)
    plot(recs, os.path.join(a.out, "plot.png"), m)
    print("\n".join(head[:-2]))


def plot(recs, path, m):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("ratios: matplotlib is missing (pip install matplotlib): no plot", file=sys.stderr)
        return
    if not recs:
        return
    groups = list(dict.fromkeys(r["group"] for r in recs))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(16, 0.3 * len(recs) + 1.6))
    labels, y = [], list(range(len(recs)))[::-1]
    for yi, r in zip(y, recs):
        c = colors[groups.index(r["group"]) % len(colors)]
        ax.barh(yi, r["ratio"], color=c, edgecolor="black" if r.get("met") is False else c)
        ax.text(r["ratio"] * 1.04, yi, f"{r['ratio']:.2f}×", va="center", fontsize=7)
        labels.append(f"{r['group']}: {r['measure']} / {r['baseline']}")
    ax.set_ylim(-0.7, len(recs) - 0.3)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(right=max(r["ratio"] for r in recs) * 4)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("spritedisk as a fraction of the baseline in the same run (log scale; 1 = as good)")
    ax.set_title(f"spritedisk vs baselines — {m['host']}, {m['cpus']} CPUs, commit {m['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    pa = sub.add_parser("add")
    pa.add_argument("out")
    pa.add_argument("--group", required=True)
    pa.add_argument("--measure", required=True)
    pa.add_argument("--value", type=float, required=True)
    pa.add_argument("--unit", required=True)
    pa.add_argument("--baseline", required=True)
    pa.add_argument("--baseline-value", type=float, required=True)
    pa.add_argument("--lower-better", action="store_true")
    pa.add_argument("--goal-min", type=float)
    pa.add_argument("--goal-max", type=float)
    pf = sub.add_parser("finish")
    pf.add_argument("out")
    a = p.parse_args()
    if a.cmd == "add":
        record(a.out, a.group, a.measure, a.value, a.unit, a.baseline, a.baseline_value,
               a.lower_better, a.goal_min, a.goal_max)
    else:
        finish(a)


if __name__ == "__main__":
    main()
