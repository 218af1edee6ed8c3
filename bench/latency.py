#!/usr/bin/env python3
"""Benchmark substitution from a far-away cache: `store realise` against Nix 2.8 through a
proxy that adds a round-trip time (default 10 ms and 50 ms) in front of nginx, on the same
machine, in the same run.

The cache is a signed zstd `file://` cache written by `store copy --to` with the binary
under test (so it has whatever that binary writes besides narinfos and NARs, such as
closure indexes), served by nginx as static files; bench/latency_proxy.py sits in front.

  chain  1,000 small paths, each referencing the previous (closure of the last one)
  src    50,000 small files, one path

Per RTT and closure, interleaved, each into a fresh empty store with a fresh HOME:

  store  store --root FRESH --store-dir /nix/store realise [--refresh] --substituters PROXY
         --trusted-public-keys K P          (--refresh if the binary's realise has it)
  nix    nix copy --from PROXY --to FRESH P
  again  (only if realise has --refresh, i.e. a client narinfo cache) `store realise`
         without --refresh into a fresh store whose state dir starts as a copy of one
         that substituted the same closure from the same URL before (its store database
         left out): the repeated-run case

It counts the requests each run made (nginx's access log: narinfo, NAR, other GETs, 404s,
connections) and the proxy's CPU time, and checks, after the first round, that each store
holds exactly the closure Nix has (bench/cache.py's checks). Exit status 0 all targets met
(nix/store ≥ 20 for chain, ≥ 3 for src), 1 some failed, 2 a check failed.

usage: python3 bench/latency.py --store-bin PATH [--rtt 10,50] [--only chain|src] [--reps N]
See bench/README.md ("Latency").
"""

import argparse
import http.client
import os
import shutil
import statistics
import sys
import time
import urllib.parse

import cache
import netcache
from common import bench_rounds, free_port, run_capture, start_nginx, stderr_log, wait_http

HERE = os.path.dirname(os.path.abspath(__file__))
OUR_PROXY = os.path.join(HERE, "latency_proxy.py")
SHARED_PROXY = next((os.path.normpath(p) for p in (os.path.join(cache.REPO, up, "shared/bench/latency-proxy.py")
                     for up in ("..", "../..")) if os.path.exists(p)), "../shared/bench/latency-proxy.py")
SECTIONS = ["chain", "src"]
TARGETS = {"chain": 20.0, "src": 3.0}  # nix / store, issue 15 §3
NOT_STATE = {"db", "locks", "temproots", "gcroots", "gc.lock", "serve"}  # not copied for `again`

log = stderr_log("latency-bench")


class AccessLog:
    """Requests nginx logged since the last mark (log format of common.start_nginx)."""

    def __init__(self, path):
        self.path = path
        self.offset = 0

    def mark(self):
        self.offset = os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def since(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            lines = f.read().decode(errors="replace").splitlines()
        c = {"narinfo": 0, "nar": 0, "other": 0, "404": 0, "conns": set(), "MB": 0.0}
        for line in lines:
            conn, status, size, uri = line.split(" ", 3)
            kind = "narinfo" if uri.endswith(".narinfo") else "nar" if uri.startswith("/nar/") else "other"
            c[kind] += 1
            c["404"] += status == "404"
            c["conns"].add(conn)
            c["MB"] += int(size) / 1e6
        c["conns"] = len(c["conns"])
        return c


def start_proxy(procs, kind, target, one_way_ms, work):
    """The latency proxy on a free port in front of target (http://HOST:PORT); its URL."""
    port = free_port()
    script = OUR_PROXY if kind == "ours" else SHARED_PROXY
    out = open(os.path.join(work, f"proxy-{port}.log"), "w")
    p = procs.start(f"proxy +{one_way_ms:g} ms", [sys.executable, script, str(port),
                                                   target.removeprefix("http://"), f"{one_way_ms:g}"],
                    stdout=out, stderr=out)
    out.close()
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/nix-cache-info", p, "latency proxy")
    log(f"{kind} latency proxy (pid {p.pid}) on {url}: +{one_way_ms:g} ms each way")
    return p, url


def measure_rtt(url, n=20):
    """(median ms of a GET of nix-cache-info on a kept-alive connection, median ms of a new
    connection plus that GET): the round trip the proxy really adds here."""
    u = urllib.parse.urlsplit(url)
    kept, fresh = [], []
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/nix-cache-info")
        conn.getresponse().read()
        kept.append(time.perf_counter() - t0)
    conn.close()
    for _ in range(max(3, n // 4)):
        t0 = time.perf_counter()
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        c.request("GET", "/nix-cache-info")
        c.getresponse().read()
        fresh.append(time.perf_counter() - t0)
        c.close()
    return statistics.median(kept) * 1000, statistics.median(fresh) * 1000


def copy_state(seed_root, root):
    """root's state dir starts as seed_root's, without its store database, locks and roots."""
    src = os.path.join(seed_root, "ix", "var")
    dst = os.path.join(root, "ix", "var")
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name in NOT_STATE:
            continue
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s):
            shutil.copytree(s, d, symlinks=True)
        else:
            shutil.copy2(s, d)
    db = os.path.join(src, "db")
    for name in os.listdir(db) if os.path.isdir(db) else []:
        if not name.startswith("store.sqlite"):  # other databases (a narinfo cache) go along
            os.makedirs(os.path.join(dst, "db"), exist_ok=True)
            shutil.copy2(os.path.join(db, name), os.path.join(dst, "db", name))


def variants_for(env, url, tops, refresh, seed):
    """{name: fn(dir) -> (cmd, env)} for one closure at one RTT."""
    def realise(d, extra):
        return env.ours(os.path.join(d, "root"), "realise", *extra, "--substituters", url,
                        "--trusted-public-keys", env.pubkey, *tops)

    v = {
        "store": lambda d: (realise(d, ["--refresh"] if refresh else []),
                            env.home_env(os.path.join(d, "home"), False)),
        "nix": lambda d: (["nix", "copy", "--from", url, "--to", os.path.join(d, "root"), *tops],
                          env.home_env(os.path.join(d, "home"), True)),
    }
    if seed:
        v["again"] = lambda d: (realise(d, []), env.home_env(seed["home"], False))
    return v


def seed_store(env, label, url, tops):
    """A store that substituted tops from url once (narinfo cache filled), for `again`."""
    d = env.fresh_dir(f"{label}-seed")
    seed = {"root": os.path.join(d, "root"), "home": os.path.join(d, "home")}
    run_capture(env.ours(seed["root"], "realise", "--substituters", url, "--trusted-public-keys",
                         env.pubkey, *tops), env.home_env(seed["home"], False))
    return seed


def run_section(env, key, rtt, url, proxy, access, args, refresh):
    """Interleaved rounds of store / nix (/ again) for one closure at one RTT."""
    tops = netcache.tops_of(env, [key])
    expect = env.nix_infos(tops)
    label = f"{key}@{rtt:g}ms"
    seed = None
    if refresh:
        log(f"{label}: seeding a store for the repeated-run case ...")
        seed = seed_store(env, label, url, tops)
    variants = variants_for(env, url, tops, refresh, seed)
    stats = {v: [] for v in variants}
    cpu0 = {}

    def setup(v, rnd):
        d = env.fresh_dir(f"{label}-{v}")
        if v == "again":
            copy_state(seed["root"], os.path.join(d, "root"))
        access.mark()
        cpu0[v] = cache.proc_cpu_seconds([proxy.pid])
        return d

    def teardown(v, d, measured):
        c = access.since()
        c["proxy_cpu"] = cache.proc_cpu_seconds([proxy.pid]) - cpu0[v]
        stats[v].append(c)

    def check(v, d, out):
        root = os.path.join(d, "root")
        if v == "nix":
            cache.check_nix_copy(env, root, tops, expect)
        else:
            cache.check_ours(env, root, tops, expect)
        log(f"  {label}/{v}: result checked against nix path-info")

    res = bench_rounds(label, variants, args.reps, setup, teardown, check, warmup=args.warmup, log=log)
    return {"key": key, "rtt": rtt, "res": res, "stats": stats}


def med(stats, k):
    return statistics.median(s[k] for s in stats)


def report(results, rtts, info, notes):
    """Markdown tables; returns (text, all targets met)."""
    ok_all = True
    out = ["## Machine\n"] + [f"- {k}: {v}" for k, v in info.items()] + notes + [""]
    out.append("## Substitution through the latency proxy (nginx, cache written by `store copy --to`)\n")
    out.append("| RTT nominal (measured) | closure | store median s (min) | nix median s (min) | "
               "ratio nix/store | target | pass/fail |")
    out.append("|---|---|---|---|---|---|---|")
    for r in results:
        s, n = r["res"]["store"], r["res"]["nix"]
        ratio = n.median / s.median
        target = TARGETS[r["key"]]
        ok = ratio >= target
        ok_all &= ok
        what = "chain: 1,000 paths" if r["key"] == "chain" else "src: 50,000 files, one path"
        out.append(f"| {r['rtt']:g} ms ({rtts[r['rtt']]}) | {what} | {s.median:.3f} ({s.min:.3f}) | "
                   f"{n.median:.3f} ({n.min:.3f}) | {ratio:.2f} | ≥ {target:g} | {'PASS' if ok else 'FAIL'} |")
        if "again" in r["res"]:
            a = r["res"]["again"]
            out.append(f"| {r['rtt']:g} ms | {r['key']}, repeated run (narinfo cache warm) | "
                       f"{a.median:.3f} ({a.min:.3f}) | {n.median:.3f} | {n.median / a.median:.2f} | "
                       f"(info) | — |")
    out.append("")
    out.append("### Per run (medians): requests nginx served, proxy CPU, client CPU and peak RSS\n")
    out.append("| RTT | closure | variant | narinfo GETs | NAR GETs | other GETs | 404s | connections | "
               "MB sent | proxy CPU s | client CPU s | peak RSS MiB |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for v, st in r["stats"].items():
            res = r["res"][v]
            out.append(f"| {r['rtt']:g} ms | {r['key']} | {v} | {med(st, 'narinfo'):.0f} | {med(st, 'nar'):.0f} | "
                       f"{med(st, 'other'):.0f} | {med(st, '404'):.0f} | {med(st, 'conns'):.0f} | "
                       f"{med(st, 'MB'):.1f} | {med(st, 'proxy_cpu'):.2f} | {res.cpu_median:.2f} | "
                       f"{res.peak_rss_mib:.1f} |")
    out.append("")
    out.append("Overall: " + ("all targets met" if ok_all else "SOME TARGETS FAILED"))
    return "\n".join(out), ok_all


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    netcache.add_common_args(ap, "/tmp/store-bench/latency")
    ap.add_argument("--rtt", default="10,50", help="round-trip times in ms, comma separated (default 10,50)")
    ap.add_argument("--only", choices=SECTIONS, help="only this closure")
    ap.add_argument("--proxy", choices=["ours", "shared"], default="ours",
                    help="bench/latency_proxy.py (default) or ../shared/bench/latency-proxy.py")
    args = ap.parse_args()
    if args.reps < 1 or args.warmup < 0:
        ap.error("--reps must be >= 1 and --warmup >= 0")
    try:
        args.rtts = [float(x) for x in args.rtt.split(",")]
    except ValueError:
        ap.error(f"--rtt: not a list of numbers: {args.rtt}")
    return args


def measure(env, args, procs, sections, notes):
    """Everything timed: per RTT a proxy, then each closure; returns (results, rtts)."""
    refresh = netcache.help_has(env, "realise", "--refresh")
    notes.append(f"- `realise --refresh`: {'present: first run uses it; repeated run measured' if refresh else 'absent (no client narinfo cache): no repeated-run rows'}")
    access = AccessLog(os.path.join(env.work, "nginx-latency", "access.log"))
    nginx, nginx_url = start_nginx(procs, os.path.join(env.work, "nginx-latency"), env.cache,
                                   access_log=access.path)
    log(f"nginx (pid {nginx.pid}) serving {env.cache} on {nginx_url}")
    quiet = cache.Quiet(args.max_load, args.wait_quiet)
    load, was_quiet = quiet.start()
    notes.append(f"- load average (1 min) at start: {load:.2f}" + ("" if was_quiet else " (not quiet: measured anyway)"))
    results, rtts = [], {}
    for rtt in args.rtts:
        proxy, url = start_proxy(procs, args.proxy, nginx_url, rtt / 2, env.work)
        kept, fresh = measure_rtt(url)
        rtts[rtt] = f"{kept:.1f} ms; new connection + GET {fresh:.1f} ms"
        log(f"RTT through the proxy: {rtts[rtt]}")
        for key in sections:
            busy = quiet.section(f"{key}@{rtt:g}ms", min(120, args.wait_quiet))
            log(f"== {key} at {rtt:g} ms (other work: {busy:.2f} CPUs) ==")
            results.append(run_section(env, key, rtt, url, proxy, access, args, refresh))
        procs.stop(proxy)
    notes.append("- other work per section (CPUs busy elsewhere, sampled 2 s before it): " + "; ".join(quiet.notes))
    return results, rtts


def main():
    args = parse_args()
    sections = [args.only] if args.only else SECTIONS

    def run_all(env, procs, info, notes):
        notes.append(f"- proxy: {OUR_PROXY if args.proxy == 'ours' else SHARED_PROXY}")
        return measure(env, args, procs, sections, notes)

    netcache.run(args, log, sections, "src" in sections, run_all,
                 lambda res, info, notes: report(res[0], res[1], info, notes))


if __name__ == "__main__":
    main()
