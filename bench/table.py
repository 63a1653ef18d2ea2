#!/usr/bin/env python3
"""Turns roomcast-load JSON lines (labels SYSTEM/CASE/RUN) into the markdown
comparison table of bench/compare.sh: medians per system and case, each
figure with its ratios to the seed's and to the floor's, a summary against
the floor, the Centrifugo protocol against the seed protocol on the same
nodes (SYSTEM-cf ÷ SYSTEM), and the targets of issue 6."""

import argparse
import json
import statistics
import sys
from collections import defaultdict

NAMES = {"seed": "seed (Node)", "tokio": "roomcast-tokio", "smol": "roomcast-smol",
         "tokio-cf": "roomcast-tokio, Centrifugo protocol",
         "smol-cf": "roomcast-smol, Centrifugo protocol",
         "floor": "floor (1 process)"}
# Centrifugo-protocol variants: the same nodes, driven with --protocol centrifugo.
CF_SUFFIX = "-cf"
# Node CPU per delivery of a -cf system ÷ its seed-protocol system: the target.
CF_CPU_TARGET = 1.15
# Systems every other one is compared with, in the order the ratios are printed.
BASES = ("seed", "floor")
CASES = {
    "A": "A: fanout, as fast as possible",
    "A-small": "A-small: A with a small window",
    "B": "B: one room, as fast as possible",
    "B-small": "B-small: B with a small window",
    "C": "C: idle connections",
    "D": "D: fanout at 500 messages/s",
}
THROUGHPUT = ("A", "A-small", "B", "B-small")


def load(path):
    runs = defaultdict(list)
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            parts = r.get("label", "").split("/")
            if len(parts) == 3:
                runs[(parts[0], parts[1])].append(r)
    return runs


def med(rs, key):
    vals = [safe(key, r) for r in rs]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def safe(key, r):
    """key(r), or None when a figure is missing (older JSON lines, a PID gone)."""
    try:
        return key(r)
    except (KeyError, TypeError):
        return None


def worst(rs, key):
    vals = [key(r) for r in rs]
    return max(vals) if vals else None


def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float) and not v.is_integer() and abs(v) < 100:
        s = f"{v:,.2f}"
    else:
        s = f"{v:,.0f}"
    return s + unit


def describe(rs):
    r = rs[0]
    if r["scenario"] == "idle":
        return f"{r['subscribers']:,} connections in {r['rooms']:,} rooms, held {r['held_s']:.0f} s"
    what = (
        f"{r['subscribers']:,} subscribers / {r['rooms']:,} rooms / "
        f"{r['publishers']} publishers / {r['messages']:,} messages of {r['size']} B"
    )
    if r.get("rate"):
        what += f" at {r['rate']:.0f}/s"
    elif r.get("window_deliveries"):
        wd = r["window_deliveries"]
        members = max(r["subscribers"] // max(r["rooms"], 1), 1)
        what += (f", at most {wd:,} deliveries in flight "
                 f"(≈ {max(wd // members, 1):,} messages of {members:,} members)")
    else:
        what += f", window {r['window']} messages"
    return what


# (case, figure, key over one run, aggregate, unit, lower is better)
def throughput_figures(c, latency):
    rows = [
        (c, "deliveries/s", lambda r: r["deliveries_per_s"], med, "", False),
        (c, "node CPU µs per delivery", lambda r: r["node_cpu_us_per_delivery"], med, "", True),
        (c, "Redis CPU µs per message", lambda r: r["redis_cpu_us_per_message"], med, "", True),
        (c, "load generator CPU µs per delivery",
         lambda r: r["load_cpu_us_per_delivery"], med, "", True),
        (c, "delivered of expected (worst run)", None, None, "", None),
        (c, "lost / duplicates / out of order (worst run)", None, None, "", None),
    ]
    rows += [(c, f"latency {q} (ms)", lambda r, q=q: r["latency_us"][q] / 1e3, med, "", True)
             for q in latency]
    rows.append((c, "peak RSS of the nodes (MiB)",
                 lambda r: sum(m["peak_kib"] for m in r["node_mem"]) / 1024, med, "", True))
    return rows


FIGURES = (
    throughput_figures("A", ["p50", "p99"])
    + throughput_figures("A-small", ["p50", "p99"])
    + throughput_figures("B", ["p99"])
    + throughput_figures("B-small", ["p99"])
    + [
        ("C", "RSS per connection (KiB)", lambda r: (r["mem_per_conn_bytes"] or 0) / 1024, med, "", True),
        ("C", "connect rate (conn/s)", lambda r: r["connect_rate"], med, "", False),
        ("C", "RSS of the nodes, connected (MiB)",
         lambda r: sum(m["rss_connected_kib"] for m in r["node_mem"]) / 1024, med, "", True),
        ("C", "peak RSS of the nodes (MiB)",
         lambda r: sum(m["peak_kib"] for m in r["node_mem"]) / 1024, med, "", True),
        ("D", "latency p50 (ms)", lambda r: r["latency_us"]["p50"] / 1e3, med, "", True),
        ("D", "latency p90 (ms)", lambda r: r["latency_us"]["p90"] / 1e3, med, "", True),
        ("D", "latency p99 (ms)", lambda r: r["latency_us"]["p99"] / 1e3, med, "", True),
        ("D", "latency max (ms)", lambda r: r["latency_us"]["max"] / 1e3, med, "", True),
        ("D", "deliveries/s", lambda r: r["deliveries_per_s"], med, "", False),
        ("D", "node CPU µs per delivery", lambda r: r["node_cpu_us_per_delivery"], med, "", True),
        ("D", "Redis CPU µs per message", lambda r: r["redis_cpu_us_per_message"], med, "", True),
        ("D", "lost / duplicates / out of order (worst run)", None, None, "", None),
    ]
)


def counts(rs):
    lost = worst(rs, lambda r: r["lost"])
    dup = worst(rs, lambda r: r["duplicates"])
    ooo = worst(rs, lambda r: r["out_of_order"])
    return f"{lost:,} / {dup:,} / {ooo:,}"


def delivered(rs):
    r = min(rs, key=lambda r: r["delivered"] - r["expected"])
    return f"{r['delivered']:,} of {r['expected']:,}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--idle-max")
    ap.add_argument("--date", default="")
    ap.add_argument("--machine", default="")
    ap.add_argument("--repeats", default="")
    ap.add_argument("--quick", default="0")
    ap.add_argument("--loadavg", default="")
    ap.add_argument("--elapsed", default="")
    ap.add_argument("--systems", default="seed tokio smol")
    a = ap.parse_args()

    runs = load(a.results)
    systems = [s for s in a.systems.split() if any((s, c) in runs for c in CASES)]
    out = []
    w = out.append
    bases = [b for b in BASES if b in systems]
    w(f"## roomcast vs the seed and the floor{' (QUICK)' if a.quick == '1' else ''}")
    w("")
    w(f"- date: {a.date}")
    w(f"- machine: {a.machine}; load generator, Redis and the nodes on it")
    w(f"- each case: 2 fresh nodes per system on one Redis (the floor: 1 process, no Redis), "
      f"median of {a.repeats} run(s); "
      + (", ".join(f"(x× {b}) = this system ÷ {b}" for b in bases) or "no baseline run"))
    w("- CPU: user + system time of the node processes (Σ over the nodes), of Redis and of the "
      "load generator, from the first message sent to the end of the run (connecting and "
      "warm-up excluded), read from /proc/PID/stat at one clock tick (10 ms) of resolution, "
      "so a figure from less than ~0.5 s of CPU (Redis in B, most of QUICK) is rough")
    if a.loadavg:
        w(f"- load average (1/5/15 min) before → after: {a.loadavg}")
    if a.elapsed:
        w(f"- whole script: {int(a.elapsed) // 60} min {int(a.elapsed) % 60} s")
    w("")
    for c, title in CASES.items():
        rs = runs.get(("seed", c)) or next((runs[(s, c)] for s in systems if (s, c) in runs), None)
        if rs:
            w(f"- {title}: {describe(rs)}")
    w("")
    w("| case | figure | " + " | ".join(NAMES.get(s, s) for s in systems) + " |")
    w("|---|---|" + "---:|" * len(systems))
    for c, name, key, agg, unit, _lower in FIGURES:
        if not any((s, c) in runs for s in systems):
            continue
        cells = []
        base = {b: agg(runs[(b, c)], key) for b in bases if key and (b, c) in runs}
        for s in systems:
            rs = runs.get((s, c))
            if not rs:
                cells.append("—")
                continue
            if key is None:
                cells.append(counts(rs) if name.startswith("lost") else delivered(rs))
                continue
            v = agg(rs, key)
            cell = fmt(v, unit)
            ratios = [f"{v / base[b]:.2f}× {b}" for b in bases
                      if b != s and base.get(b) and v is not None]
            if ratios:
                cell += f" ({', '.join(ratios)})"
            cells.append(cell)
        w(f"| {c} | {name} | " + " | ".join(cells) + " |")
    w("")

    # Targets of issue 6, per roomcast system.
    def get(s, c, key):
        rs = runs.get((s, c))
        return med(rs, key) if rs else None

    def clean(s, c):
        rs = runs.get((s, c), [])
        return bool(rs) and all(r["lost"] == 0 and r["duplicates"] == 0 for r in rs)

    dps = lambda r: r["deliveries_per_s"]  # noqa: E731
    p99 = lambda r: r["latency_us"]["p99"]  # noqa: E731
    mem = lambda r: r["mem_per_conn_bytes"]  # noqa: E731
    roomcast = [s for s in systems if s not in BASES]
    cpu = lambda r: r["node_cpu_us_per_delivery"]  # noqa: E731
    if roomcast and "floor" in systems:
        w("Against the floor (system ÷ floor; deliveries/s: above 1 is faster than the floor; "
          "node CPU per delivery: below 1 is cheaper):")
        w("")
        w("| case | " + " | ".join(f"{NAMES.get(s, s)}: deliveries/s, node CPU per delivery"
                                   for s in roomcast) + " |")
        w("|---|" + "---|" * len(roomcast))
        for c in THROUGHPUT + ("D",):
            if ("floor", c) not in runs:
                continue
            cells = []
            for s in roomcast:
                v, b = get(s, c, dps), get("floor", c, dps)
                u, f = get(s, c, cpu), get("floor", c, cpu)
                d = f"{v / b:.2f}×" if v is not None and b else "—"
                e = f"{u / f:.2f}×" if u is not None and f else "—"
                cells.append(f"{d}, {e}")
            w(f"| {c} | " + " | ".join(cells) + " |")
        w("")
    pairs = [(s, s[:-len(CF_SUFFIX)]) for s in systems
             if s.endswith(CF_SUFFIX) and s[:-len(CF_SUFFIX)] in systems]
    if pairs:
        w("Centrifugo protocol against the seed protocol, same nodes, same run "
          "(SYSTEM-cf ÷ SYSTEM; target: node CPU per delivery ≤ "
          f"{CF_CPU_TARGET:.2f}×):")
        w("")
        w("| case | system | node CPU µs per delivery, seed → Centrifugo | ratio | target "
          "| deliveries/s ratio | load generator CPU per delivery ratio |")
        w("|---|---|---|---:|---|---:|---:|")
        lcpu = lambda r: r["load_cpu_us_per_delivery"]  # noqa: E731
        for c in THROUGHPUT:
            for cfs, s in pairs:
                if (cfs, c) not in runs or (s, c) not in runs:
                    continue
                u, b = get(cfs, c, cpu), get(s, c, cpu)
                ratio = u / b if u is not None and b else None
                verdict = "—" if ratio is None else (
                    "met" if ratio <= CF_CPU_TARGET and clean(cfs, c) else "MISSED")
                if ratio is not None and not clean(cfs, c):
                    verdict += ", with losses"
                v, bv = get(cfs, c, dps), get(s, c, dps)
                lu, lb = get(cfs, c, lcpu), get(s, c, lcpu)
                w(f"| {c} | {NAMES.get(s, s)} | {fmt(b)} → {fmt(u)} | "
                  f"{'—' if ratio is None else f'{ratio:.2f}×'} | {verdict} | "
                  f"{f'{v / bv:.2f}×' if v is not None and bv else '—'} | "
                  f"{f'{lu / lb:.2f}×' if lu is not None and lb else '—'} |")
        w("")
    roomcast = [s for s in roomcast if not s.endswith(CF_SUFFIX)]
    if roomcast and "seed" in systems:
        w("| target | " + " | ".join(NAMES.get(s, s) for s in roomcast) + " |")
        w("|---|" + "---|" * len(roomcast))
        rows = []
        for c in ("A", "B"):
            cells = []
            for s in roomcast:
                v, b = get(s, c, dps), get("seed", c, dps)
                if v is None or not b:
                    cells.append("—")
                    continue
                ok = v >= 4 * b and clean(s, c)
                cells.append(f"{'met' if ok else 'MISSED'}: {v / b:.2f}×"
                             f"{'' if clean(s, c) else ', with losses'}")
            rows.append((f"{c}: deliveries/s ≥ 4× seed, nothing lost", cells))
        cells = []
        for s in roomcast:
            v, b = get(s, "D", p99), get("seed", "D", p99)
            if v is None or not b:
                cells.append("—")
                continue
            cells.append(f"{'met' if v <= b / 5 else 'MISSED'}: {v / 1e3:,.1f} ms = 1/{b / max(v, 1e-9):.1f} of seed")
        rows.append(("D: p99 ≤ 1/5 of seed", cells))
        cells = []
        for s in roomcast:
            v = get(s, "C", mem)
            if v is None:
                cells.append("—")
                continue
            cells.append(f"{'met' if v <= 4096 else 'MISSED'}: {v / 1024:.2f} KiB")
        rows.append(("C: ≤ 4 KiB RSS per idle subscribed connection", cells))
        for name, cells in rows:
            w(f"| {name} | " + " | ".join(cells) + " |")
        w("")

    if a.idle_max:
        try:
            im = json.loads(open(a.idle_max).read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            im = None
        if im:
            w(f"Idle-max (one roomcast-tokio node, nofile {im['nofile']:,}, two load processes): "
              f"{im['connections']:,} of {im['attempted']:,} connections open "
              f"({im['subscribed']:,} subscribed, {im['failures']:,} failed), "
              f"RSS {im['rss_before_kib'] / 1024:.1f} → {im['rss_after_kib'] / 1024:.1f} MiB "
              f"(peak {im['peak_kib'] / 1024:.1f} MiB) = "
              f"**{im['mem_per_conn_bytes'] / 1024:.2f} KiB per connection**, "
              f"~{im['connect_rate']:,} conn/s.")
            w("")
    bad = [r["label"] for rs in runs.values() for r in rs if not r["ok"]]
    if bad:
        w(f"Runs not OK (loss, duplicates, timeout or connection failures): {', '.join(sorted(bad))}")
        w("")
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
