#!/usr/bin/env python3
"""Turns bench/results/results.json (written by bench/run.mjs) into RESULTS.md and PNG plots.

    python3 bench/report.py [--results bench/results/results.json]

Plots need matplotlib; without it the Markdown is still written (with a note).
"""

import argparse
import json
import os
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    HAVE_MPL = True
except ImportError:  # pragma: no cover - reported in the output
    HAVE_MPL = False

POLICY_COLORS = {"ours": "#1f77b4", "none": "#7f7f7f", "sdk": "#ff7f0e", "fixed": "#d62728"}


def fmt(x, digits=2, unit=""):
    if x is None:
        return "–"
    if isinstance(x, float):
        if abs(x) >= 100:
            s = f"{x:,.0f}"
        elif abs(x) >= 10:
            s = f"{x:.1f}"
        else:
            s = f"{x:.{digits}f}"
    else:
        s = f"{x:,}" if isinstance(x, int) else str(x)
    return f"{s}{unit}"


def pct(x, digits=1):
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def kib(n):
    return "–" if n is None else f"{n / 1024:,.1f} KiB"


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def verdict(ok):
    return "met" if ok else "**not met**"


# --------------------------------------------------------------------------- sections


def load_md(res):
    rows = []
    for name, sec in res.get("sections", {}).items():
        if sec and sec.get("machine_busy_cores") is not None:
            sha = sec.get("build_sha256") or ""
            rows.append([name, sec.get("measured_at", "")[:19].replace("T", " "), fmt(sec.get("seconds")),
                         fmt(sec["machine_busy_cores"], 2), sec.get("loadavg_after"), sha[:16] + ("…" if sha else "")])
    if not rows:
        return ""
    return "\n".join(["", "Per section (busy cores: all processes, the benchmark's own included; a section measured "
                      "in an earlier `--only` run may be of another build):", "",
                      table(["section", "finished (UTC)", "seconds", "busy cores", "load average after", "Worker build"], rows)])


def machine_md(m):
    rows = [
        ("date", m.get("date")),
        ("CPU", f"{m.get('cpu')} ({m.get('cores')} cores{', ' + str(round(m['cpu_mhz'])) + ' MHz' if m.get('cpu_mhz') else ''})"),
        ("memory", f"{m.get('memory_gib')} GiB"),
        ("kernel", m.get("kernel")),
        ("load average (1, 5, 15 min) at start / end", f"{m.get('loadavg_at_start')} / {m.get('loadavg_at_end')}"),
        ("Node.js", m.get("node")),
        ("rustc", m.get("rustc")),
        ("workerd", m.get("workerd")),
        ("miniflare / wrangler", f"{m.get('miniflare')} / {m.get('wrangler')}"),
        ("worker crate", m.get("worker_crate")),
        ("commit", f"{m.get('git_commit')}{' (with uncommitted changes to the Worker source)' if m.get('source_modified') else ''}"),
        ("Worker build", f"`index_bg.wasm` sha256 {m['build']['wasm_sha256'][:16]}…, built {m['build']['built_at'][:19].replace('T', ' ')} UTC"
         if m.get("build") else "–"),
        ("run", "`./scripts/bench.sh --quick` (short)" if m.get("quick") else "`./scripts/bench.sh` (full)"),
    ]
    return table(["", ""], rows)


def overhead_md(sec, cores=2):
    if not sec or sec.get("error"):
        return f"_Not measured: {sec.get('error') if sec else 'section not run'}._"
    plan = sec["plan"]
    lines = [
        f"Closed loop: each client sends `POST /v1/messages` (small JSON answer, the simulator's default "
        f"12 tokens), waits for the whole answer, sends again. {plan['rounds']} round(s) of "
        f"{plan['durationMs'] / 1000:g} s per point after {plan['warmupMs'] / 1000:g} s of warm-up; the targets "
        "alternate inside each round. *Added* is the target's percentile minus the direct one at the same "
        "concurrency. *workerd CPU* is user + system time of the Worker's workerd process per request "
        "(warm-up included), *CPU %* of one core. *Other load* is the CPU the machine spent on processes "
        "that are not part of the benchmark while the point ran (in cores, of "
        f"{cores}): where it is high, that point's latencies are inflated.",
        "",
    ]
    added = {(a["target"], a["concurrency"]): a for a in sec.get("added", [])}
    rows = []
    for p in sec["points"]:
        lat = p.get("latency_ms") or {}
        a = added.get((p["target"], p["concurrency"]), {})
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(p["statuses"].items()))
        rows.append([
            p["concurrency"], p["label"], fmt(p["rps"]), fmt(lat.get("p50"), 3), fmt(lat.get("p99"), 3), fmt(lat.get("p999"), 3),
            fmt(a.get("added_p50_ms"), 3), fmt(a.get("added_p99_ms"), 3),
            fmt(p.get("worker_cpu_us_per_request")), fmt(p.get("worker_cpu_pct")), fmt(p.get("foreign_load_cores"), 2),
            statuses + (f"; errors {p['errors']}" if p.get("errors") else ""),
        ])
    lines.append(table(
        ["clients", "path", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "added p50 ms", "added p99 ms", "workerd CPU µs/req", "CPU %",
         "other load, cores", "answers"],
        rows,
    ))
    floors = floors_md(sec)
    if floors:
        lines += ["", floors]
    return "\n".join(lines)


FLOORS = (("js_floor", "JS floor"), ("rust_floor", "Rust floor"))
PROXY_ROWS = ("proxy", "proxy_quiet", "proxy_entry", "proxy_rpm", "proxy_all")


def floor_ratios(sec, concurrency=1):
    """Per proxy row at one concurrency: its workerd CPU per request over each floor's, and its
    p50 minus each floor's. The rows of the floors present in the run only."""
    points = {p["target"]: p for p in sec.get("points", []) if p["concurrency"] == concurrency}
    floors = [(fid, name, points[fid]) for fid, name in FLOORS if fid in points]
    if not floors:
        return [], []
    rows = []
    for pid in ("rust_floor",) + PROXY_ROWS:
        p = points.get(pid)
        if not p:
            continue
        row = {"target": pid, "label": p["label"], "cpu": p.get("worker_cpu_us_per_request"),
               "p50": (p.get("latency_ms") or {}).get("p50"), "over": {}}
        for fid, _, f in floors:
            if fid == pid:
                continue
            cpu, base = row["cpu"], f.get("worker_cpu_us_per_request")
            fp50 = (f.get("latency_ms") or {}).get("p50")
            row["over"][fid] = {
                "cpu_ratio": cpu / base if cpu is not None and base else None,
                "added_p50_ms": row["p50"] - fp50 if row["p50"] is not None and fp50 is not None else None,
            }
        rows.append(row)
    return floors, rows


def floors_md(sec, concurrency=1):
    floors, rows = floor_ratios(sec, concurrency)
    if not rows:
        return None
    headers = ["path", "workerd CPU µs/req", "p50 ms"]
    for _, name, _ in floors:
        headers += [f"CPU / {name}", f"added p50 over {name}, ms"]
    out = []
    for r in rows:
        cells = [r["label"], fmt(r["cpu"]), fmt(r["p50"], 3)]
        for fid, _, _ in floors:
            o = r["over"].get(fid)
            cells += ["–", "–"] if o is None else [
                "–" if o["cpu_ratio"] is None else f"{o['cpu_ratio']:.2f}×", fmt(o["added_p50_ms"], 3)]
        out.append(cells)
    names = " and ".join(f"the {name} ({fmt(f.get('worker_cpu_us_per_request'))} µs, p50 {fmt((f.get('latency_ms') or {}).get('p50'), 3)} ms)"
                         for _, name, f in floors)
    return "\n".join([
        f"**Against the floors, {concurrency} client{'' if concurrency == 1 else 's'}** (same runs): each path's workerd CPU "
        f"per request as a multiple of {names}, and its p50 minus the floor's. The JS floor is what any proxy "
        "on this runtime pays; the Rust floor is what any Rust Worker built with the same `worker` crate and "
        "`worker-build` pays, so the proxy's own cost is what it adds over the Rust floor."
        + rust_floor_size(sec),
        "",
        table(headers, out),
    ])


AB_PATHS = [
    ("js-at-once", "a JS Worker answering at once"),
    ("js-floor", "JS floor"),
    ("js-same-io", "same-I/O floor (JS)"),
    ("rust-floor", "Rust floor"),
    ("proxy", "breakwater"),
]


def ab_cell(v, digits=2):
    if not v or v.get("median") is None:
        return "–"
    return f"{v['median']:.{digits}f} ({v['min']:.{digits}f}–{v['max']:.{digits}f})"


def floors_ab_md(sec):
    """The interleaved run (bench/ab.mjs): every path's CPU per request and its ratios, each
    taken within a round, median (range) over the rounds."""
    if sec and sec.get("error"):
        return f"_Failed: {sec['error']}_"
    if not sec or not sec.get("summary"):
        return "_Not measured in this run._"
    summ, opts = sec["summary"], sec.get("options", {})
    rows = []
    for pid, name in AB_PATHS:
        x = summ.get(pid)
        if not x:
            continue
        rows.append([name, ab_cell(x.get("cpu_us_per_req"), 0), ab_cell(x.get("x_js_floor")),
                     ab_cell(x.get("own_x_js_floor")), ab_cell(x.get("x_js_same_io")), ab_cell(x.get("x_rust_floor")),
                     ab_cell(x.get("p50_added_ms"), 3)])
    return "\n".join([
        f"One client sends each request to every path in turn ({opts.get('rounds')} rounds × {opts.get('requests')} "
        "requests per path, `bench/ab.mjs`), each path in its own workerd, so drift hits all alike; ratios are taken "
        "within each round, median (range over rounds). *Own* is a path's CPU above the Worker that answers at once "
        "(what the runtime alone costs), as a multiple of the JS floor's own. The *same-I/O floor* does the proxy's "
        "I/O in plain JavaScript with no decisions.",
        "",
        table(["path", "workerd CPU µs/req", "/ JS floor", "own / JS floor's own", "/ same-I/O floor", "/ Rust floor",
               "p50 over the JS floor, ms"], rows),
    ])


def rust_floor_size(sec):
    b = sec.get("rust_floor")
    if not b:
        return ""
    return (f" The Rust floor's module (`bench/rust-floor/`): {kib(b['wasm_bytes'])} raw, {kib(b['wasm_gzip_bytes'])} gzip, "
            f"sha256 {b['wasm_sha256'][:16]}….")


def admission_md(sec):
    if not sec or sec.get("error") or not sec.get("admission"):
        return "_Not measured._"
    rows = []
    for a in sec["admission"]:
        rows.append([
            a["concurrency"], a["tier"], fmt(a["decisions_per_s"]), fmt(a["unlimited_rps"]), f"{a['ratio']:.2f}",
            a["denied"], fmt(a["added_p50_ms"], 3), fmt(a["added_p99_ms"], 3),
            fmt(a.get("worker_cpu_us_per_request")), fmt(a.get("unlimited_cpu_us_per_request")),
        ])
    return "\n".join([
        "One client key, so every request asks the same Durable Object (one hot key); the tier's limits are "
        "huge, so nothing is denied and every request is one admission decision (plus its settlement, "
        "off the client's path). Same runs as the overhead table; *added* is against the unlimited path "
        "(no Durable Object) at the same concurrency. Locally the Durable Object runs in the same "
        "workerd process, so a round trip costs CPU here rather than network time.",
        "",
        table(["clients", "limits of the hot key", "admitted req/s", "unlimited req/s", "ratio", "denied",
               "added p50 ms", "added p99 ms", "workerd CPU µs/req", "unlimited CPU µs/req"], rows),
    ])


def streaming_md(sec):
    if not sec or sec.get("error"):
        return f"_Not measured: {sec.get('error') if sec else 'section not run'}._"
    out = ["**Time to first byte** of a streaming answer (`\"stream\": true`, the simulator's default "
           "12-token stream, one request at a time). The proxy holds the answer until its first SSE event "
           "has arrived (so that an `overloaded_error` inside a `200` can still be retried).", ""]
    rows = []
    for t in sec["ttfb"]:
        rows.append([
            t["label"], t["count"], fmt(t["first_byte_ms"]["p50"], 3), fmt(t["first_byte_ms"]["p99"], 3),
            fmt(t.get("added_first_byte_p50_ms"), 3), fmt(t.get("added_first_byte_p99_ms"), 3),
            fmt(t["total_ms"]["p50"], 3), ", ".join(f"{k}: {v}" for k, v in t["statuses"].items()),
        ])
    out.append(table(["path", "streams", "first byte p50 ms", "first byte p99 ms", "added p50 ms", "added p99 ms",
                      "whole stream p50 ms", "answers"], rows))
    out += ["", f"**Memory while streaming** a {sec['stream_bytes'] / 1e6:.1f} MB answer "
            f"(`x-sim-fault: {{\"tokens\": {sec['tokens']}, \"pad_bytes\": {sec['pad_bytes']}}}`): resident memory "
            "(VmRSS) of the workerd process, read by the client when 10 %, 50 % and 90 % of the bytes had "
            f"arrived, and sampled every 10 ms for the maximum. The Worker's workerd idled at "
            f"{sec['idle_rss_mib']} MiB before the first stream. Runs in this order, one Worker (each floor in its own workerd).", ""]
    rows = []
    for m in sec["memory"]:
        r = m.get("rss_mib") or {}
        growth = None if r.get("max") is None or r.get("before") is None else r["max"] - r["before"]
        rows.append([
            m["label"], "yes" if m["complete"] else f"**no** ({m.get('error')})", fmt(m["mb_per_s"]),
            fmt(m.get("worker_cpu_s"), 2),
            fmt(r.get("before"), 1), fmt(r.get("p10"), 1), fmt(r.get("p50"), 1), fmt(r.get("p90"), 1),
            fmt(r.get("max"), 1), fmt(growth, 1),
        ])
    out.append(table(["run", "complete", "MB/s", "workerd CPU s", "RSS start MiB", "at 10 %", "at 50 %", "at 90 %",
                      "max", "max − start"], rows))
    return "\n".join(out)


def size_md(sec):
    if not sec or sec.get("error"):
        return f"_Not measured: {sec.get('error') if sec else 'section not run'}._"
    rows = [
        ["`build/index_bg.wasm`", kib(sec["wasm_bytes"]), kib(sec["wasm_gzip_bytes"])],
        ["`build/index.js` (glue)", kib(sec["js_bytes"]), kib(sec["js_gzip_bytes"])],
    ]
    d = sec.get("dry_run") or {}
    if d.get("ok"):
        rows.append(["`wrangler deploy --dry-run` total upload", f"{d['upload_kib']:,.1f} KiB", f"{d['upload_gzip_kib']:,.1f} KiB"])
    else:
        rows.append(["`wrangler deploy --dry-run`", "failed", f"exit {d.get('exit_code')}"])
    if sec.get("wasm_without_custom_sections_bytes"):
        rows.insert(1, ["`build/index_bg.wasm` without its custom sections (names, producers)",
                        kib(sec["wasm_without_custom_sections_bytes"]), kib(sec["wasm_without_custom_sections_gzip_bytes"])])
    out = ["Sizes (gzip at level 9; wrangler reports its own gzip of the upload):", "", table(["artifact", "raw", "gzip"], rows), ""]
    if sec.get("wasm_sections"):
        parts = sorted(sec["wasm_sections"], key=lambda x: -x["size"])[:6]
        out += ["Largest sections of the module: " + ", ".join(f"{p['name']} {kib(p['size'])}" for p in parts) + ".", ""]
    if sec.get("wasm_code_by_crate"):
        total = sum(c["bytes"] for c in sec["wasm_code_by_crate"]) or 1
        top = sec["wasm_code_by_crate"][:10]
        out += ["Code section by crate (function bodies, from the module's name section): "
                + ", ".join(f"`{c['crate']}` {kib(c['bytes'])} ({100 * c['bytes'] / total:.0f} %)" for c in top) + ".", ""]
    cold = []
    cn = sec.get("cold_node")
    if cn:
        cold.append([f"compile + instantiate the module in a fresh Node {cn['node']} (V8 {cn['v8']}), lazy compilation (V8's default, as workerd)",
                     fmt(cn["lazy"]["compile_ms"]), fmt(cn["lazy"]["instantiate_ms"]), fmt(cn["lazy"]["total_ms"])])
        cold.append(["same, every function compiled up front (`--no-wasm-lazy-compilation`)",
                     fmt(cn["eager"]["compile_ms"]), fmt(cn["eager"]["instantiate_ms"]), fmt(cn["eager"]["total_ms"])])
    cw = sec.get("cold_workerd")
    if cw:
        w, t = cw["worker"], cw["trivial"]
        cold.append(["Miniflare start → workerd ready → first `/healthz` answer, this Worker", "–", "–", fmt(w["first_healthz_ms"])])
        cold.append(["same, a trivial JavaScript Worker", "–", "–", fmt(t["first_healthz_ms"])])
        cold.append(["difference: what this Worker's module costs at start", "–", "–", fmt(cw["module_cost_ms"])])
        cold.append(["first `POST /v1/messages` after start (new isolate state, first subrequest)", "–", "–", fmt(w.get("first_message_ms"))])
    out.append(f"Cold start (median of {(cn or cw or {}).get('runs', '?')} fresh starts, ms):")
    out.append("")
    out.append(table(["measure", "compile ms", "instantiate ms", "total ms"], cold))
    return "\n".join(out)


def overload_md(sec, plots):
    if not sec or sec.get("error"):
        return f"_Not measured: {sec.get('error') if sec else 'section not run'}._"
    out = [
        f"The simulator admits {sec['capacity']} requests/s (token bucket, burst {max(1, sec['capacity'] // 10)}) and answers "
        "`529 overloaded_error` above that, and to everything during an outage. Open-loop arrivals "
        f"({sec['arrivals']}), each request with a {sec['budget_ms'] / 1000:g} s budget: a success is a 2xx within "
        "it. The four policies run at the same time, each against its own simulator (same capacity, same outage "
        "clock), so they are compared under the same machine load. *Upstream calls* are counted by the simulator.",
        "",
        "Policies: " + "; ".join(f"**{p['policy']}**: {p['label']}" for p in sec["scenarios"][0]["policies"]) + ".",
    ]
    out += ["", "Scenarios (d) and (e) have no capacity limit: the simulator plays one API key's own Anthropic limits "
            "(its `key_limits` mode: continuous token buckets for requests, input and output tokens, each holding a "
            "minute's quota and refilling at quota/60 per second, charged at arrival with `max_tokens` against output, "
            "`429 rate_limit_error` with an honest `retry-after` when a bucket cannot hold a request), the buckets empty "
            "at the start (the key has been busy), and demand twice what they refill.",
            "", ORACLE_TEXT]
    for sc in sec["scenarios"]:
        kl = sc.get("keyLimits")
        limits = ""
        if kl:
            limits = (" Key limits: " + ", ".join(f"{k} {v:,}" for k, v in kl.items() if k in ("rpm", "input_tpm", "output_tpm"))
                      + f", buckets {100 * kl.get('initial_fill', 1):.0f} % full at the start; each request "
                      + f"{sc.get('request_cost', {}).get('inputTokens', '?'):,} input tokens, max_tokens "
                      + f"{sc.get('request_cost', {}).get('maxTokens', '?')}; the key sustains {fmt(sc.get('sustainable_rps'), 2)} requests/s.")
        out += ["", f"#### ({sc['id']}) {sc['title']}", "",
                f"{sc['rate']} requests/s for {sc['durationMs'] / 1000:g} s"
                + (", outage " + ", ".join(f"{o['start_ms'] / 1000:g}–{(o['start_ms'] + o['duration_ms']) / 1000:g} s" for o in sc["outages"]) if sc["outages"] else "")
                + "." + limits + (f" Other processes on the machine used {sc['foreign_load_cores']:.2f} cores on average meanwhile."
                                  if sc.get("foreign_load_cores") is not None else ""), ""]
        rows = []
        o = sc.get("oracle")
        if o:
            rows.append(["**oracle**", o["requests"], pct(o["success_rate"]), o["upstream_calls"], fmt(o["calls_per_request"], 2),
                         fmt(1.0, 3) if o["successes"] else "–", "0 %", "1.00", "–", "–", "–", "computed, not measured"])
        for p in sc["policies"]:
            lo, la = p.get("latency_ok_ms") or {}, p.get("latency_all_ms") or {}
            finals = ", ".join(f"{k}: {v}" for k, v in sorted(p["final_answers"].items(), key=lambda kv: -kv[1]))
            rows.append([p["policy"], p["requests"], pct(p["success_rate"]), p["upstream_calls"], fmt(p["calls_per_request"], 2),
                         fmt(p["successes_per_call"], 3), share_429(p),
                         "–" if p.get("success_vs_oracle") is None else f"{p['success_vs_oracle']:.2f}",
                         fmt(lo.get("p50")), fmt(lo.get("p99")), fmt(la.get("p99")), finals])
        out.append(table(["policy", "requests", "success", "upstream calls", "calls / request", "successes / call",
                          "upstream 429 share", "success vs oracle", "p50 ms (successes)", "p99 ms (successes)",
                          "p99 ms (all answers)", "final answers"], rows))
        ours = next((p for p in sc["policies"] if p["policy"] == "ours"), None)
        wl = ours and ours.get("worker_log")
        if wl and wl.get("requests"):
            outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(wl["by_outcome"].items(), key=lambda kv: -kv[1]))
            waits = ", ".join(f"{k}: {v} ({wl['wait_ms'].get(k, 0) / 1000:.0f} s in all)" for k, v in sorted(wl["waits"].items(), key=lambda kv: -kv[1]))
            out += ["", f"The Worker's own log for **ours**: {wl['requests']} requests, "
                    f"{wl['attempts'] / max(1, wl['requests']):.2f} attempts per request; status and why it stopped: {outcomes}; "
                    f"waits by cause: {waits or 'none'}."]
        if sc["id"] in plots:
            out += ["", f"![({sc['id']}) successes and upstream calls per second]({plots[sc['id']]})"]
    return "\n".join(out)


ORACLE_TEXT = (
    "The **oracle** row is computed, not measured: the best any policy could do knowing the capacity, the key's "
    "limits and when each outage ends. It serves the scenario's exact arrival schedule in order (FIFO, which for "
    "equal budgets is earliest deadline first), each request at the earliest moment the simulator would admit it "
    "(every bucket holds it, no outage in force), and drops, without an upstream call, a request that cannot start "
    "before its deadline; so one upstream call per success and no 429 or 529 (`bench/oracle.mjs`). *Success vs "
    "oracle* is a policy's success rate divided by the oracle's.")


def share_429(p):
    v = p.get("upstream_429_share")
    if v is None and p.get("upstream_calls"):
        v = (p.get("upstream_by_status") or {}).get("429", 0) / p["upstream_calls"]
    return pct(v)


def overload_summary_md(sec):
    """The compact table for the README: per scenario, the oracle and every policy's success as a
    ratio of it, with calls per request and the upstream 429 share."""
    if not sec or sec.get("error"):
        return None
    policies = []
    for sc in sec["scenarios"]:
        for p in sc["policies"]:
            if p["policy"] not in policies:
                policies.append(p["policy"])
    rows = []
    for sc in sec["scenarios"]:
        o = sc.get("oracle") or {}
        pols = {p["policy"]: p for p in sc["policies"]}
        cells = [f"({sc['id']}) {sc['title']}", pct(o.get("success_rate"), 0) if o else "–"]
        for name in policies:
            p = pols.get(name)
            if not p:
                cells.append("–")
                continue
            ratio = p.get("success_vs_oracle")
            cells.append(f"{pct(p['success_rate'], 0)} ({'–' if ratio is None else f'{ratio:.2f}'}×), {p['calls_per_request']:.2f} calls/req"
                         + (f", {share_429(p)} 429" if (p.get("upstream_by_status") or {}).get("429") else ""))
        rows.append(cells)
    return table(["scenario", "oracle success"] + [f"{n}: success (vs oracle), calls/request" for n in policies], rows)


FAIR_TEXT = (
    "One upstream key whose own request limit binds (the simulator's `key_limits` mode, requests only), its "
    "bucket empty at the start: a warm-up request takes the last room, so its answer tells the Worker the key is "
    "at its limit. Each caller has its own client key. A job (its tier's `budget_ms` as long as the job's "
    "`x-proxy-budget-ms`) sends its backlog at once; *light* callers, people, each send one request at a fixed "
    "interval with a 15 s budget, the first a second after the backlog and the callers spread over one interval. "
    "A success is a 2xx within the budget. *Wait* is from the client's send to the simulator's receipt of the "
    "attempt that answered (each request carries a header the Worker passes on; the simulator logs arrivals), "
    "over successes. *Refused with room* counts requests the Worker refused although the key had room for them: "
    "replaying the key's bucket from the simulator's log, one more request at some moment between the refused "
    "one's arrival and its deadline would have left every request the upstream admitted its room (each such "
    "room counted once).")

FAIR_ORACLE_TEXT = (
    "The **oracle** is computed, not measured (`fairOracle` in `bench/oracle.mjs`): it knows the key's bucket and, "
    "each time the bucket holds a request, serves one of those waiting: interactive before background, then the "
    "caller with the fewest served so far (equal weights), then the oldest; a request whose deadline has passed is "
    "dropped without an upstream call. So one upstream call per success, no 429.")


def fair_ms(w, key):
    return "–" if not w or w.get(key) is None else f"{w[key] / 1000:.2f} s"


def fair_md(sec, plots):
    if not sec or sec.get("error"):
        return f"_Not measured: {sec.get('error') if sec else 'section not run'}._"
    out = [FAIR_TEXT, "", FAIR_ORACLE_TEXT]
    for sc in sec["scenarios"]:
        o, u = sc["oracle"], sc["ours"]
        job, users = sc["job"], sc["users"]
        tier = ", ".join(f"`{k}` {v}" for k, v in job["tier"].items())
        out += ["", f"#### ({sc['id']}) {sc['title']}", "",
                f"Key: {sc['keyLimits']['rpm']} requests/minute. Job: {job['requests']} requests at once, "
                f"{job['budgetMs'] / 1000:g} s budgets, tier {tier}. Light: {users['count']} callers, one request every "
                f"{users['intervalMs'] / 1000:g} s for {users['durationMs'] / 1000:g} s, {users['budgetMs'] / 1000:g} s budgets. "
                + (f"The scenario took {sc['seconds']:.0f} s (Worker start to last answer). " if sc.get("seconds") else "")
                + f"Sends were at most {fmt(sc.get('max_dispatch_lateness_ms'))} ms late; other processes on the machine used "
                f"{fmt(sc.get('foreign_load_cores'), 2)} cores on average meanwhile.", ""]
        ratio = lambda a, b: "–" if not b else f"{a / b:.2f}"
        rows = [
            [f"light successes (of {u['light']['requests']})", u["light"]["successes"], o["light"]["successes"], ratio(u["light"]["successes"], o["light"]["successes"])],
            ["light wait p50", fair_ms(u["light"]["wait_ms"], "p50"), fair_ms(o["light"]["wait_ms"], "p50"), ""],
            ["light wait p95", fair_ms(u["light"]["wait_ms"], "p95"), fair_ms(o["light"]["wait_ms"], "p95"), ""],
            ["light wait max", fair_ms(u["light"]["wait_ms"], "max"), fair_ms(o["light"]["wait_ms"], "max"), ""],
            [f"job goodput: successes (of {u['heavy']['requests']})", u["heavy"]["successes"], o["heavy"]["successes"], ratio(u["heavy"]["successes"], o["heavy"]["successes"])],
            ["job wait p50", fair_ms(u["heavy"]["wait_ms"], "p50"), fair_ms(o["heavy"]["wait_ms"], "p50"), ""],
            ["upstream calls per success", fmt(u["calls_per_success"], 3), "1.000", ""],
            ["upstream 429s", u["upstream_429"], 0, ""],
            [f"refused with room (of {u['refused']} refused)", u["refused_with_room"], 0, ""],
        ]
        out.append(table(["", "ours", "oracle", "ours / oracle"], rows))
        finals = lambda c: ", ".join(f"{k}: {v}" for k, v in sorted(u[c]["final_answers"].items(), key=lambda kv: -kv[1]))
        stopped = lambda c: ", ".join(f"{k}: {v}" for k, v in sorted(u[c]["worker_stopped"].items(), key=lambda kv: -kv[1])) or "–"
        waits = ", ".join(f"{k.replace('heavy ', 'job ')}: {v['waits']} ({v['ms'] / 1000:.1f} s in all)"
                          for k, v in sorted(u.get("worker_waits", {}).items()))
        late = [f"{x['id']} answered {x['answer_after_deadline_ms'] / 1000:.2f} s after the client's deadline, its attempt "
                f"having reached the upstream {x['upstream_at_ms'] / 1000:+.2f} s from it"
                for c in ("light", "heavy") for x in u[c].get("answered_after_budget", []) if x.get("upstream_at_ms") is not None]
        out += ["", f"Final answers: light {finals('light')}; job {finals('heavy')}"
                + (f" ({'; '.join(late)})" if late else "") + ". The Worker's log, status and why it "
                f"stopped: light {stopped('light')}; job {stopped('heavy')}; waits by class and cause: {waits or 'none'}."]
        if f"fair_{sc['id']}" in plots:
            out += ["", f"![({sc['id']}) answered upstream sends by class, ours and the oracle's]({plots['fair_' + sc['id']]})"]
    return "\n".join(out)


def fair_targets(sec):
    rows = []
    for sc in (sec or {}).get("scenarios", []):
        o, u = sc["oracle"], sc["ours"]
        light = "interactive" if sc["job"]["tier"].get("priority") == "background" else "light"
        heavy = "background" if light == "interactive" else "job"
        ol, ul = o["light"], u["light"]
        rows.append([f"({sc['id']}) {light} successes", "≥ 99 % of the oracle's",
                     f"{ul['successes']} of {ul['requests']} vs {ol['successes']}",
                     verdict(ul["successes"] >= 0.99 * ol["successes"])])
        up95, op95 = (ul.get("wait_ms") or {}).get("p95"), (ol.get("wait_ms") or {}).get("p95")
        rows.append([f"({sc['id']}) {light} p95 wait", "≤ the oracle's + 1 s",
                     f"{fair_ms(ul.get('wait_ms'), 'p95')} vs {fair_ms(ol.get('wait_ms'), 'p95')}",
                     verdict(up95 is not None and op95 is not None and up95 <= op95 + 1000)])
        oh, uh = o["heavy"], u["heavy"]
        rows.append([f"({sc['id']}) {heavy} goodput", "≥ 95 % of the oracle's",
                     f"{uh['successes']} of {uh['requests']} vs {oh['successes']}",
                     verdict(uh["successes"] >= 0.95 * oh["successes"])])
    return rows


def micro_md(sec):
    if not sec or sec.get("error"):
        return f"_Not measured: {sec.get('error') if sec else 'section not run'}._"
    rows = [[f"`{r['name']}`", r.get("median"), r.get("median_throughput", "–"), r.get("fastest"), r.get("mean"), r.get("samples")]
            for r in sec["rows"]]
    return "\n".join([f"`{sec['command']}` (divan; native code on this machine, not WebAssembly in workerd, "
                      "which is typically 1.5–3× slower):", "", table(["benchmark", "median", "throughput (median)", "fastest", "mean", "samples"], rows)])


def targets_md(res):
    s = res.get("sections", {})
    rows = []
    oh = s.get("overhead") or {}
    for a in oh.get("added", []):
        if a["target"] == "proxy":
            rows.append([f"added latency, {a['concurrency']} client(s), no limits", "≤ 1 ms p50, ≤ 3 ms p99",
                         f"{a['added_p50_ms']:.3f} ms p50, {a['added_p99_ms']:.3f} ms p99",
                         verdict(a["added_p50_ms"] <= 1 and a["added_p99_ms"] <= 3)])
    ab = (s.get("floors") or {}).get("summary") or {}
    abp = ab.get("proxy")
    if abp and abp.get("x_js_floor"):
        others = [f"/ {name} {abp[key]['median']:.2f}×" for key, name in
                  (("x_js_same_io", "same-I/O floor"), ("x_rust_floor", "Rust floor")) if abp.get(key)]
        rows.append(["workerd CPU per request / JS floor, 1 client, no limits (interleaved)", "≤ 1.5×",
                     "; ".join([f"{abp['x_js_floor']['median']:.2f}× ({abp['x_js_floor']['min']:.2f}–{abp['x_js_floor']['max']:.2f})"]
                               + ([", ".join(others)] if others else [])),
                     verdict(abp["x_js_floor"]["median"] <= 1.5)])
        rows.append(["added p50 over the JS floor, 1 client, no limits (interleaved)", "≤ +0.3 ms",
                     f"{abp['p50_added_ms']['median']:+.3f} ms",
                     verdict(abp["p50_added_ms"]["median"] <= 0.3)])
    _, frows = floor_ratios(oh) if oh.get("points") and not abp else ([], [])
    proxy = next((r for r in frows if r["target"] == "proxy"), None)
    js = proxy and proxy["over"].get("js_floor")
    rust = proxy and proxy["over"].get("rust_floor")
    if js and js["cpu_ratio"] is not None:
        rows.append(["workerd CPU per request / JS floor, 1 client, no limits", "≤ 1.5×",
                     f"{js['cpu_ratio']:.2f}×" + (f" (/ Rust floor: {rust['cpu_ratio']:.2f}×)" if rust and rust["cpu_ratio"] is not None else ""),
                     verdict(js["cpu_ratio"] <= 1.5)])
    if js and js["added_p50_ms"] is not None:
        rows.append(["added p50 over the JS floor, 1 client, no limits", "≤ +0.3 ms",
                     f"{js['added_p50_ms']:+.3f} ms" + (f" (over the Rust floor: {rust['added_p50_ms']:+.3f} ms)" if rust and rust["added_p50_ms"] is not None else ""),
                     verdict(js["added_p50_ms"] <= 0.3)])
    st = s.get("streaming") or {}
    steady = [m for m in st.get("memory", []) if m.get("rss_mib") and m["target"] not in ("js_floor", "rust_floor", "proxy_first")]
    if steady:
        growth = max((m["rss_mib"]["max"] or 0) - (m["rss_mib"]["before"] or 0) for m in steady)
        first = next((m for m in st["memory"] if m["target"] == "proxy_first"), None)
        first_growth = first and (first["rss_mib"]["max"] or 0) - (first["rss_mib"]["before"] or 0)
        rows.append([f"memory while streaming {st['stream_bytes'] / 1e6:.0f} MB", "flat",
                     f"+{growth:.1f} MiB at most per stream once warm"
                     + (f" (first stream after start: +{first_growth:.1f} MiB)" if first_growth is not None else ""),
                     verdict(growth < 0.1 * st["stream_bytes"] / 2**20)])
    ov = s.get("overload") or {}
    for sc in ov.get("scenarios", []):
        pols = {p["policy"]: p for p in sc["policies"]}
        ours = pols.get("ours")
        if not ours:
            continue
        if sc["id"] == "a":
            rows.append(["(a) outage shorter than the budget", "≥ 99 % success at ≤ 1.1 calls/request",
                         f"{pct(ours['success_rate'])} at {ours['calls_per_request']:.2f}",
                         verdict(ours["success_rate"] >= 0.99 and ours["calls_per_request"] <= 1.1)])
        elif sc["id"] == "b":
            others = [p["successes_per_call"] for k, p in pols.items() if k != "ours"]
            rows.append(["(b) twice capacity", "more successes per upstream call than every other policy",
                         f"{ours['successes_per_call']:.3f} vs best other {max(others):.3f}",
                         verdict(all(ours["successes_per_call"] > o for o in others))])
        elif sc["id"] == "c":
            rows.append(["(c) outage longer than the budget", "≤ 1.25 upstream calls/request",
                         f"{ours['calls_per_request']:.2f}", verdict(ours["calls_per_request"] <= 1.25)])
    rows += fair_targets(s.get("fair"))
    sz = s.get("size") or {}
    if sz.get("wasm_gzip_bytes"):
        rows.append(["wasm size", "≤ 300 KB gzip", f"{sz['wasm_gzip_bytes'] / 1000:.0f} KB ({kib(sz['wasm_gzip_bytes'])})",
                     verdict(sz["wasm_gzip_bytes"] <= 300_000)])
    if not rows:
        return "_No section with a target was run._"
    return "\n".join([table(["target", "wanted", "measured", ""], rows), "",
                      "With 8 and 32 clients the Worker's one isolate is saturated, so most of the added latency there is "
                      "queueing; the 1-client row is the cost of one request."])


# --------------------------------------------------------------------------- plots


def plot_overload(sc, path):
    pols = sc["policies"]
    fig, axes = plt.subplots(len(pols), 1, figsize=(10, 2.3 * len(pols) + 0.8), sharex=True, sharey=True)
    ymax = 0
    for p in pols:
        ymax = max(ymax, max(p["series"]["upstream_calls"] + p["series"]["successes"] + [0]))
    for ax, p in zip(axes, pols):
        t = p["series"]["t"]
        for o in sc["outages"]:
            ax.axvspan(o["start_ms"] / 1000, (o["start_ms"] + o["duration_ms"]) / 1000, color="#f2c0c0", alpha=0.5, lw=0)
        ax.axvspan(0, sc["durationMs"] / 1000, color="#e8eef7", alpha=0.35, lw=0, zorder=0)
        ax.step(t, p["series"]["upstream_calls"], where="post", color="#444444", lw=1.2, label="upstream calls/s")
        ax.step(t, p["series"]["successes"], where="post", color=POLICY_COLORS.get(p["policy"], "C0"), lw=2, label="successes/s (client)")
        ax.step(t, p["series"]["arrivals"], where="post", color="#2ca02c", lw=0.8, ls=":", label="arrivals/s")
        cap = sc.get("capacity") or sc.get("sustainable_rps") or 0
        ax.axhline(cap, color="#999999", lw=0.8, ls="--", label="capacity" if sc.get("capacity") else "key's sustainable rate")
        ax.set_title(f"{p['policy']}: success {100 * p['success_rate']:.1f} %, {p['calls_per_request']:.2f} calls/request, "
                     f"{p['successes_per_call']:.3f} successes/call", fontsize=9, loc="left")
        ax.set_ylim(0, min(ymax * 1.08 + 1, max(cap * 4, sc["rate"] * 3)))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=4, loc="upper right")
    axes[-1].set_xlabel("seconds since the start of traffic (red: outage, blue: arrivals)")
    what = f"capacity {sc['capacity']} req/s" if sc.get("capacity") else f"key sustains {sc.get('sustainable_rps')} req/s"
    fig.suptitle(f"({sc['id']}) {sc['title']}: {what}, budget {sc['budget_ms'] / 1000:g} s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fair(sc, path):
    t = sc["series"]["t"]
    cum = lambda xs: [sum(xs[: i + 1]) for i in range(len(xs))]
    fig, ax = plt.subplots(figsize=(10, 4))
    for cls, color, label in (("light", "#1f77b4", "light (people)"), ("heavy", "#555555", "job")):
        for who, ls in (("ours", "-"), ("oracle", "--")):
            ax.step(t, cum(sc["series"][f"{who}_{cls}"]), where="post", color=color, ls=ls, lw=2 if who == "ours" else 1.2,
                    label=f"{label}, {who}")
    last = max([i for i, v in enumerate(zip(*[sc["series"][k] for k in sc["series"] if k != "t"])) if any(v)] + [0])
    ax.set_xlim(0, last + 2)
    ax.set_xlabel("seconds since the job's backlog arrived")
    ax.set_ylabel("answered upstream sends, cumulative")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    o, u = sc["oracle"], sc["ours"]
    fig.suptitle(f"({sc['id']}) key at {sc['keyLimits']['rpm']} rpm: light {u['light']['successes']}/{u['light']['requests']} "
                 f"(oracle {o['light']['successes']}), job {u['heavy']['successes']}/{u['heavy']['requests']} (oracle {o['heavy']['successes']})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_overhead(sec, path):
    pts = sec["points"]
    concs = sorted({p["concurrency"] for p in pts})
    targets = []
    for p in pts:
        if p["target"] not in targets:
            targets.append(p["target"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(targets)
    for i, t in enumerate(targets):
        for ax, key in zip(axes, ["p50", "p99"]):
            ys = [next((p["latency_ms"][key] for p in pts if p["target"] == t and p["concurrency"] == c), 0) for c in concs]
            ax.bar([j + i * width for j in range(len(concs))], ys, width, label=t)
    for ax, key in zip(axes, ["p50", "p99"]):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(concs))], [f"{c} client{'' if c == 1 else 's'}" for c in concs])
        ax.set_yscale("log")
        ax.set_ylabel(f"{key} latency, ms (log)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.suptitle("POST /v1/messages latency: direct vs through workerd", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rss(sec, path):
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for m in sec["memory"]:
        if not m.get("samples"):
            continue
        xs = [s[1] / 1e6 for s in m["samples"] if s[2] is not None]
        ys = [s[2] for s in m["samples"] if s[2] is not None]
        ax.plot(xs, ys, lw=1.3, label=m["label"])
    ax.set_xlabel("MB of the answer received by the client")
    ax.set_ylabel("workerd RSS, MiB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"Resident memory while streaming {sec['stream_bytes'] / 1e6:.0f} MB", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


README_BEGIN = "<!-- benchmark figures: written by bench/report.py --readme from bench/results/results.json -->"
README_END = "<!-- end of benchmark figures -->"


def readme_md(res):
    """The figures the README quotes, from one committed run: never typed by hand."""
    m = res.get("machine", {})
    s = res.get("sections", {})
    out = [f"From the run in `bench/results/results.json` ({m.get('date', '?')}, {m.get('cpu', '?')}, "
           f"{m.get('cores', '?')} cores); every figure and its details in "
           "[`bench/results/RESULTS.md`](bench/results/RESULTS.md).", "", targets_md(res)]
    summary = overload_summary_md(s.get("overload"))
    if summary:
        out += ["", "Goodput under overload, beside an oracle that knows the capacity, the limits and the "
                "outage's end:", "", summary]
    return "\n".join(out)


def readme_with_figures(text, res):
    """`text` with the block between the README markers replaced by [`readme_md`]."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"the README has no block between {README_BEGIN!r} and {README_END!r}")
    return text[: begin + len(README_BEGIN)] + "\n" + readme_md(res) + "\n" + text[end:]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=os.path.join(here, "results", "results.json"))
    ap.add_argument("--readme", help="write the README's block of figures from the results")
    ap.add_argument("--check-readme", help="fail unless the README's block of figures is what the results give")
    args = ap.parse_args()
    with open(args.results) as f:
        res = json.load(f)
    for path, write in ((args.readme, True), (args.check_readme, False)):
        if not path:
            continue
        with open(path) as f:
            text = f.read()
        wanted = readme_with_figures(text, res)
        if write:
            with open(path, "w") as f:
                f.write(wanted)
        elif wanted != text:
            print(f"{path}: the benchmark figures differ from {os.path.relpath(args.results)}; "
                  f"run python3 bench/report.py --readme {path}", file=sys.stderr)
            sys.exit(1)
        return
    outdir = os.path.dirname(os.path.abspath(args.results))
    s = res.get("sections", {})
    plots = {}
    notes = []
    if HAVE_MPL:
        ov = s.get("overload") or {}
        for sc in ov.get("scenarios", []):
            name = f"overload_{sc['id']}.png"
            plot_overload(sc, os.path.join(outdir, name))
            plots[sc["id"]] = name
        for sc in (s.get("fair") or {}).get("scenarios", []):
            name = f"fair_{sc['id']}.png"
            plot_fair(sc, os.path.join(outdir, name))
            plots[f"fair_{sc['id']}"] = name
        if (s.get("overhead") or {}).get("points"):
            plot_overhead(s["overhead"], os.path.join(outdir, "overhead_latency.png"))
            plots["overhead"] = "overhead_latency.png"
        if (s.get("streaming") or {}).get("memory"):
            plot_rss(s["streaming"], os.path.join(outdir, "stream_rss.png"))
            plots["rss"] = "stream_rss.png"
    else:
        notes.append("_matplotlib is not installed: no plots were drawn (`pip install matplotlib`, then run `python3 bench/report.py`)._")

    m = res.get("machine", {})
    md = [
        "# Benchmark results",
        "",
        "Written by `./scripts/bench.sh` (see `bench/README.md` for what each figure means and how it is "
        "measured). Everything runs on one machine: the simulated upstream (`breakwater-sim`), the Worker in "
        "local workerd (through Miniflare, on a direct socket to the Worker), and the load generator "
        "(`breakwater-loadgen`), so they compete for the same cores; figures are comparable within one run, "
        "and only roughly between machines.",
        "",
        "## Machine",
        "",
        machine_md(m),
        load_md(res),
        "",
        "## Targets",
        "",
        "Reported, not asserted.",
        "",
        targets_md(res),
        "",
        "## Overhead: added latency and throughput",
        "",
        overhead_md(s.get("overhead"), m.get("cores", 2)),
    ]
    if "overhead" in plots:
        md += ["", f"![latency per path]({plots['overhead']})"]
    md += [
        "",
        "## Against the floors, interleaved",
        "",
        floors_ab_md(s.get("floors")),
        "",
        "## Admission: Durable Object decisions on one hot key",
        "",
        admission_md(s.get("overhead")),
        "",
        "## Streaming",
        "",
        streaming_md(s.get("streaming")),
    ]
    if "rss" in plots:
        md += ["", f"![RSS while streaming]({plots['rss']})"]
    md += [
        "",
        "## Size and start",
        "",
        size_md(s.get("size")),
        "",
        "## Goodput under overload",
        "",
    ]
    summary = overload_summary_md(s.get("overload"))
    if summary:
        md += ["Summary (the table for the README; details per scenario below):", "", summary, "", ORACLE_TEXT, ""]
    md += [
        overload_md(s.get("overload"), plots),
        "",
        "## Fair share of a scarce key",
        "",
        fair_md(s.get("fair"), plots),
        "",
        "## Micro-benchmarks of the pure core",
        "",
        micro_md(s.get("micro")),
        "",
    ]
    md += notes
    with open(os.path.join(outdir, "RESULTS.md"), "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    if summary:
        print(summary)
    print(f"wrote {os.path.relpath(os.path.join(outdir, 'RESULTS.md'))}" + (f" and {len(plots)} plot(s)" if plots else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
