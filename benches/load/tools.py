#!/usr/bin/env python3
"""Helpers for benches/load/run.sh: content, DNS check, /proc sampling, idle connections, parsing, report.

Standard library only. Every loop here is bounded by a count and a deadline. Nothing here starts or stops a
process: run.sh owns the processes and passes PIDs in.
"""

import argparse
import json
import os
import random
import re
import socket
import ssl
import statistics
import struct
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------- /proc


def descendants(roots):
    """The given PIDs plus every live descendant (found through /proc/*/stat ppid, not by name)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids):
    """utime + stime of each PID (all threads of the process), summed, in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / CLK_TCK


def memory(pids):
    """Sums over the PIDs, in KiB: VmRSS, VmHWM (per-process peak) and Pss (shared pages split fairly)."""
    rss = hwm = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            continue
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return {"rss_kib": rss, "hwm_kib": hwm, "pss_kib": pss}


# --------------------------------------------------------------------------------------------- commands


def cmd_content(a):
    """The origin's files: 1 KiB no-store, 1 KiB cacheable, 100 KiB HTML that compresses like a real page."""
    os.makedirs(a.dir, exist_ok=True)
    rng = random.Random(9)  # fixed seed: the same bytes on every run
    words = ("edge proxy cache origin request response header body server client connection stream "
             "certificate handshake resolver upstream keepalive compression latency throughput memory "
             "the a of to and in is it for on with as at by from this that be are was").split()

    def text(n):
        out = []
        size = 0
        while size < n:
            w = rng.choice(words)
            out.append(w)
            size += len(w) + 1
        return " ".join(out)[:n]

    with open(os.path.join(a.dir, "nostore"), "w") as f:
        f.write(text(1024))
    with open(os.path.join(a.dir, "small"), "w") as f:
        f.write(text(1024))
    head = "<!doctype html>\n<html><head><title>bench</title></head><body>\n"
    tail = "</body></html>\n"
    parts = [head]
    size = len(head) + len(tail)
    i = 0
    while size < 100 * 1024:
        p = f'<p class="c{i % 7}" id="p{i}">{text(rng.randint(80, 400))}</p>\n'
        parts.append(p)
        size += len(p)
        i += 1
    page = "".join(parts)[: 100 * 1024 - len(tail)] + tail
    with open(os.path.join(a.dir, "big.html"), "w") as f:
        f.write(page)


def cmd_dns_check(a):
    """Exit 0 once NAME resolves to 127.0.0.1 at 127.0.0.1:PORT (polls until the deadline)."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in a.name.split(".")) + b"\0"
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.5)
        try:
            s.sendto(struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1),
                     ("127.0.0.1", a.port))
            data = s.recv(4096)
            if data[:2] == b"\x42\x42" and data[3] & 0x0F == 0 and b"\x7f\x00\x00\x01" in data[12:]:
                return 0
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.1)
    print(f"dns-check: {a.name} did not resolve to 127.0.0.1 at 127.0.0.1:{a.port}", file=sys.stderr)
    return 1


def core_stat():
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                total = sum(v[:8])
                out[m.group(1)] = [total - idle, total]
    return out


def cmd_corestat(a):
    print(json.dumps(core_stat()))


def cmd_wait_quiet(a):
    """Waits (at most MAX seconds) until every CPU was under THRESHOLD busy over a 3 s window; prints the outcome."""
    deadline = time.monotonic() + a.max_seconds
    while True:
        before = core_stat()
        time.sleep(3)
        after = core_stat()
        busy = {cpu: (after[cpu][0] - before[cpu][0]) / max(1, after[cpu][1] - before[cpu][1]) for cpu in after}
        worst = max(busy.values()) if busy else 0.0
        if worst < a.threshold:
            print(f"quiet: busiest CPU {worst:.0%} over 3 s")
            return 0
        if time.monotonic() > deadline:
            print(f"not quiet after {a.max_seconds:.0f} s (busiest CPU {worst:.0%} over the last 3 s); running anyway")
            return 0


def cmd_pids(a):
    print(" ".join(str(p) for p in descendants(a.pids)))


def cmd_cpu(a):
    print(f"{cpu_seconds(a.pids):.2f}")


def cmd_mem(a):
    print(json.dumps(memory(a.pids)))


def cmd_sample(a):
    """Samples the summed VmRSS every INTERVAL until STOP exists (or MAX seconds); prints the peak as JSON."""
    peak = memory(a.pids)
    deadline = time.monotonic() + a.max_seconds
    n = 0
    while time.monotonic() < deadline and not os.path.exists(a.stop):
        m = memory(a.pids)
        n += 1
        for k in peak:
            peak[k] = max(peak[k], m[k])
        time.sleep(a.interval)
    peak["samples"] = n
    with open(a.out, "w") as f:
        json.dump(peak, f)


def read_response(sock, deadline):
    """Reads one HTTP/1.1 response with a Content-Length body; returns the status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline:
            raise TimeoutError("response headers")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(body) < need:
        if time.monotonic() > deadline:
            raise TimeoutError("response body")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response body")
        body += chunk
    return status


def cmd_idle_conns(a):
    """Opens N keepalive connections, one request each, holds them open, measures the PIDs' memory, closes."""
    deadline = time.monotonic() + a.timeout
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
    req = f"GET {a.path} HTTP/1.1\r\nHost: {a.host}\r\n\r\n".encode()
    socks, failed = [], 0
    try:
        for _ in range(a.n):
            if time.monotonic() > deadline:
                break
            try:
                s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
                if ctx is not None:
                    s = ctx.wrap_socket(s, server_hostname=a.host)
                s.sendall(req)
                if read_response(s, deadline) >= 400:
                    failed += 1
                socks.append(s)
            except (OSError, ValueError):
                failed += 1
        time.sleep(a.settle)
        # Connections the server closed meanwhile would not count as idle: probe without blocking.
        still_open = 0
        for s in socks:
            try:
                s.setblocking(False)
                if s.recv(1) == b"":
                    continue
                still_open += 1
            except (BlockingIOError, ssl.SSLWantReadError):
                still_open += 1
            except OSError:
                pass
        mem = memory(descendants(a.pids))
        mem.update({"opened": len(socks), "open_at_measure": still_open, "failed": failed, "tls": a.tls})
        print(json.dumps(mem))
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
    return 0


# --------------------------------------------------------------------------------------------- parsing


def to_ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v.strip())
    if not m:
        return None
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(text):
    r = {"tool": "wrk"}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", text)
    r["requests"] = int(m.group(1)) if m else 0
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        r[key] = to_ms(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    r["socket_errors_detail"] = m.group(0) if m else ""
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Transfer/sec:\s+(\S+)", text)
    r["transfer_per_sec"] = m.group(1) if m else ""
    return r


def parse_h2load(text, log_path):
    r = {"tool": "h2load"}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    r["rps"] = float(m.group(2)) if m else 0.0
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text)
    if m:
        r["requests"] = int(m.group(4))
        r["socket_errors"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    else:
        r["requests"], r["socket_errors"] = 0, 0
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    r["non2xx"] = int(m.group(3)) + int(m.group(4)) if m else 0
    durations = []
    if log_path and os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    durations.append(int(parts[2]))
    if durations:
        durations.sort()
        r["p50_ms"] = durations[len(durations) // 2] / 1000.0
        r["p99_ms"] = durations[min(len(durations) - 1, (len(durations) * 99) // 100)] / 1000.0
    else:
        r["p50_ms"] = r["p99_ms"] = None
    return r


def cmd_scenario(a):
    """One scenario's result as a JSON line: the load tool's numbers plus the proxy's CPU over the run."""
    with open(a.out) as f:
        text = f.read()
    r = parse_wrk(text) if a.tool == "wrk" else parse_h2load(text, a.log)
    cpu = max(0.0, a.cpu_after - a.cpu_before)
    r.update({"side": a.side, "scenario": a.name, "round": a.round, "cpu_s": round(cpu, 2),
              "wall_s": round(a.wall, 2)})
    r["cpu_busy"] = round(cpu / a.wall, 3) if a.wall > 0 else None
    ok = r["requests"] - r["non2xx"]
    r["cpu_us_per_req"] = round(cpu * 1e6 / ok, 1) if ok > 0 and cpu > 0 else None
    # Whole-core utilisation from /proc/stat: shows when something else (another build) ran on the proxy's core.
    if a.stat_before and a.stat_after:
        before, after = json.loads(a.stat_before), json.loads(a.stat_after)
        for key, cpu in (("proxy_core", a.proxy_cpu), ("load_core", a.load_cpu)):
            b, e = before.get(str(cpu)), after.get(str(cpu))
            if b and e and e[1] > b[1]:
                r[f"{key}_busy"] = round((e[0] - b[0]) / (e[1] - b[1]), 3)
        if r.get("proxy_core_busy") is not None and r.get("cpu_busy") is not None:
            r["proxy_core_other"] = round(max(0.0, r["proxy_core_busy"] - r["cpu_busy"]), 3)
    if a.note:
        r["note"] = a.note
    print(json.dumps(r))


# --------------------------------------------------------------------------------------------- report

SCENARIOS = [
    # name, label, target ratio of requests/s (edgepop / nginx), if any
    ("passthrough", "(a) pass-through no-store, HTTP/1.1", 1.0),
    ("cache-small", "(b) cache hit 1 KiB, HTTP/1.1", 1.2),
    ("cache-gzip", "(c) cache hit 100 KiB, gzip, HTTP/1.1", 30.0),
    ("https", "(d) HTTPS HTTP/1.1 keepalive, no-store", 1.0),
    ("h2", "(e) HTTP/2 (h2load -c16 -m10), no-store", 1.0),
    ("handshake-ecdsa", "(f) new TLS conns/s, ECDSA P-256", None),
    ("handshake-rsa", "(f) new TLS conns/s, RSA 2048", None),
    ("origin", "(g) origin direct (ceiling)", None),
]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def cmd_report(a):
    rows = []
    with open(a.results) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    with open(a.meta) as f:
        meta = json.load(f)

    def pick(side, scenario):
        return [r for r in rows if r.get("side") == side and r.get("scenario") == scenario]

    summary = {"meta": meta, "scenarios": {}, "memory": {}, "raw": rows}
    out = []
    out.append("Throughput (median over rounds). p50/p99 in ms. errors = socket errors + non-2xx responses.")
    out.append("busy = the side's CPU time / wall time (1.00 = one core saturated); other = CPU time of anything else")
    out.append("on the proxy's core (noise); load = utilisation of the load core (wrk/h2load + origin + unbound).")
    hdr = f"{'scenario':<42} {'side':<8} {'req/s':>10} {'p50':>7} {'p99':>7} {'errors':>7} {'busy':>5} " \
          f"{'other':>5} {'load':>5} {'µs CPU/req':>10}"
    out.append(hdr)
    out.append("-" * len(hdr))
    for name, label, target in SCENARIOS:
        full_label = label
        per_side = {}
        for side in ("edgepop", "nginx", "origin"):
            rs = pick(side, name)
            if not rs:
                continue
            agg = {
                "rps": med([r["rps"] for r in rs]),
                "rps_min": min(r["rps"] for r in rs),
                "rps_max": max(r["rps"] for r in rs),
                "p50_ms": med([r.get("p50_ms") for r in rs]),
                "p99_ms": med([r.get("p99_ms") for r in rs]),
                "errors": sum(r.get("socket_errors", 0) + r.get("non2xx", 0) for r in rs),
                "cpu_busy": med([r.get("cpu_busy") for r in rs]),
                "proxy_core_other": med([r.get("proxy_core_other") for r in rs]),
                "load_core_busy": med([r.get("load_core_busy") for r in rs]),
                "cpu_us_per_req": med([r.get("cpu_us_per_req") for r in rs]),
                "rounds": len(rs),
                "notes": sorted({r["note"] for r in rs if r.get("note")}),
            }
            per_side[side] = agg
            spread = "" if len(rs) == 1 else f"  [{agg['rps_min']:.0f}..{agg['rps_max']:.0f}]"
            out.append(f"{label:<42} {side:<8} {fmt(agg['rps'], '10.0f')} {fmt(agg['p50_ms'], '7.2f')} "
                       f"{fmt(agg['p99_ms'], '7.2f')} {agg['errors']:>7} {fmt(agg['cpu_busy'], '5.2f')} "
                       f"{fmt(agg['proxy_core_other'], '5.2f')} {fmt(agg['load_core_busy'], '5.2f')} "
                       f"{fmt(agg['cpu_us_per_req'], '10.1f')}{spread}")
            label = ""
        e, n = per_side.get("edgepop"), per_side.get("nginx")
        ratio = None
        if e and n and e["rps"] and n["rps"]:
            ratio = e["rps"] / n["rps"]
            verdict = ""
            if target is not None:
                verdict = f"  target ≥{target:g}× : {'met' if ratio >= target else 'NOT met'}"
            cpu = ""
            if e["cpu_us_per_req"] and n["cpu_us_per_req"] and not name.startswith("handshake"):
                cpu = f"; CPU/req {e['cpu_us_per_req'] / n['cpu_us_per_req']:.2f}× (lower is better)"
            out.append(f"{'':<42} {'ratio':<8} {ratio:>9.2f}×  edgepop/nginx req/s (higher is better){verdict}{cpu}")
        hs = None
        if name.startswith("handshake") and e and n and e["cpu_us_per_req"] and n["cpu_us_per_req"]:
            hs = e["cpu_us_per_req"] / n["cpu_us_per_req"]
            out.append(f"{'':<42} {'CPU/hs':<8} edgepop {e['cpu_us_per_req']:.0f} µs vs nginx "
                       f"{n['cpu_us_per_req']:.0f} µs per handshake+request: {hs:.2f}× "
                       f"(lower is better; target ≤0.67× : {'met' if hs <= 0.67 else 'NOT met'})")
        for side, agg in per_side.items():
            for note in agg["notes"]:
                out.append(f"{'':<42} note ({side}): {note}")
        cpu_ratio = None
        if e and n and e["cpu_us_per_req"] and n["cpu_us_per_req"]:
            cpu_ratio = e["cpu_us_per_req"] / n["cpu_us_per_req"]
        summary["scenarios"][name] = {"label": full_label, "sides": per_side, "ratio_rps": ratio, "ratio_cpu_per_req": cpu_ratio,
                                      "ratio_cpu_per_handshake": hs, "target_ratio": target}

    out.append("")
    out.append("Memory (MiB, median over rounds; sum over the side's processes; lower is better). "
               "nginx side = master + worker + unbound; edgepop side = edgepop alone.")
    hdr = f"{'measurement':<42} {'side':<8} {'RSS':>8} {'PSS':>8}"
    out.append(hdr)
    out.append("-" * len(hdr))
    mems = [r for r in rows if r.get("kind") == "memory"]
    labels = {"idle": "idle (started, ~25 requests served)", "peak-cache": "peak under cache-hit load (b)+(c)",
              "idle-after-load": "idle again after all load scenarios",
              "idle-1k-http": "1,000 idle keepalive conns, HTTP",
              "idle-1k-tls": "1,000 idle keepalive conns, TLS"}
    for what, label in labels.items():
        full_label = label
        per_side = {}
        for side in ("edgepop", "nginx"):
            rs = [r for r in mems if r["side"] == side and r["what"] == what]
            if not rs:
                continue
            per_side[side] = {"rss_kib": med([r["rss_kib"] for r in rs]), "pss_kib": med([r["pss_kib"] for r in rs]),
                              "detail": [r.get("detail") for r in rs if r.get("detail")]}
            p = per_side[side]
            out.append(f"{label:<42} {side:<8} {p['rss_kib'] / 1024:8.1f} {p['pss_kib'] / 1024:8.1f}"
                       + (f"  {p['detail'][0]}" if p["detail"] else ""))
            label = ""
        e, n = per_side.get("edgepop"), per_side.get("nginx")
        ratio = None
        if e and n and n["rss_kib"]:
            ratio = e["rss_kib"] / n["rss_kib"]
            tgt = "  target ≤0.5× : " + ("met" if ratio <= 0.5 else "NOT met") if what == "idle" else ""
            out.append(f"{'':<42} {'ratio':<8} {ratio:7.2f}×  edgepop/(nginx+unbound) RSS (lower is better){tgt}")
        summary["memory"][what] = {"label": full_label, "sides": per_side, "ratio_rss": ratio}

    if meta.get("notes"):
        out.append("")
        out.append("Notes:")
        for note in meta["notes"]:
            out.append(f"  - {note}")
    text = "\n".join(out)
    print(text)
    summary["table"] = text
    with open(a.json, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("content")
    s.add_argument("dir")
    s.set_defaults(f=cmd_content)
    s = sub.add_parser("dns-check")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--timeout", type=float, default=10)
    s.set_defaults(f=cmd_dns_check)
    for name, f in (("pids", cmd_pids), ("cpu", cmd_cpu), ("mem", cmd_mem)):
        s = sub.add_parser(name)
        s.add_argument("pids", type=int, nargs="+")
        s.set_defaults(f=f)
    s = sub.add_parser("sample")
    s.add_argument("--out", required=True)
    s.add_argument("--stop", required=True)
    s.add_argument("--interval", type=float, default=0.2)
    s.add_argument("--max-seconds", type=float, default=120)
    s.add_argument("pids", type=int, nargs="+")
    s.set_defaults(f=cmd_sample)
    s = sub.add_parser("idle-conns")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--tls", action="store_true")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--host", default="bench.test")
    s.add_argument("--path", default="/small")
    s.add_argument("--settle", type=float, default=1.0)
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("pids", type=int, nargs="+")
    s.set_defaults(f=cmd_idle_conns)
    s = sub.add_parser("scenario")
    s.add_argument("--side", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--round", type=int, default=1)
    s.add_argument("--tool", choices=["wrk", "h2load"], required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--log")
    s.add_argument("--cpu-before", type=float, default=0)
    s.add_argument("--cpu-after", type=float, default=0)
    s.add_argument("--wall", type=float, default=0)
    s.add_argument("--note", default="")
    s.add_argument("--stat-before", default="")
    s.add_argument("--stat-after", default="")
    s.add_argument("--proxy-cpu", type=int, default=1)
    s.add_argument("--load-cpu", type=int, default=0)
    s.set_defaults(f=cmd_scenario)
    s = sub.add_parser("wait-quiet")
    s.add_argument("--max-seconds", type=float, default=300)
    s.add_argument("--threshold", type=float, default=0.10)
    s.set_defaults(f=cmd_wait_quiet)
    s = sub.add_parser("corestat")
    s.set_defaults(f=cmd_corestat)
    s = sub.add_parser("report")
    s.add_argument("--results", required=True)
    s.add_argument("--meta", required=True)
    s.add_argument("--json", required=True)
    s.set_defaults(f=cmd_report)
    a = p.parse_args()
    sys.exit(a.f(a) or 0)


if __name__ == "__main__":
    main()
