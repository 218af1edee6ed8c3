#!/usr/bin/env python3
"""Benchmark binary-cache substitution and serving: our `store` against Nix 2.8 and nginx,
on the same machine, in the same run.

Substitution (a fresh, empty store for every run; Nix with a fresh HOME, so its narinfo
disk cache is cold), from a zstd cache made by `nix copy --to file://…` and served by nginx:

  chain  1,000 small paths, each referencing the previous (closure of the last one)
  src    50,000 small files, one path
  big    8 × 128 MiB, one path (NAR ≈ 1 GiB), also against
         curl -s URL | zstd -d | tee FILE | openssl dgst -sha256
  valid  `store realise` of an already-valid path (hyperfine, warm)

  store --root FRESH --store-dir /nix/store realise --substituters URL --trusted-public-keys K P
  nix copy --from URL --to FRESH P

Serving (`serve`): `store serve` over a store holding the same paths against nginx serving
the cache directory as static files: narinfo requests/s (wrk -t1 -c64 -d8s) and NAR
throughput (wrk -t1 -c4 -d8s on the NAR of big); for information also the NAR rate of a
second nginx with `sendfile off` (faster on loopback, see bench/CACHE.md).

Before timing anything it checks that what each tool substituted is what Nix has (path,
narHash, narSize, references of every path of the closure, and the NAR hash of the files on
disk) and that both servers serve the same narinfo fields and NAR; exit status 2 if not,
1 if a performance target failed, 0 if all were met.

usage: python3 bench/cache.py [--work DIR] [--reps N] [--only chain|src|big|serve|valid]
See bench/CACHE.md.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time

from common import (GNU_TIME, Mismatch, Procs, Result, bench_rounds, busy_cores, commit_info,
                    http_get, load1, rm_tree, run_capture, run_measured, snapshot_binary,
                    start_nginx, stderr_log, where)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN_TREES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen_trees.py")
DEFAULT_TREES = "/tmp/store-bench/trees"
KEY_DIR = os.path.join(REPO, "tests/fixtures/nix-2.8/keys")
KEY_NAME = "test-cache-1"
MIB = 1 << 20
CHAIN_LEN = 1000
SETTLE = 370  # s, see Env.settle
RUN_PY_LAST_CLEANUP = "/tmp/store-bench/work/.last-cleanup"  # bench/run.py's cleanups
SECTIONS = ["chain", "src", "big", "serve", "valid"]

# targets
CHAIN_RATIO = 4.0  # nix / store
SRC_RATIO = 2.0
BIG_RATIO = 1.0
BIG_PIPE = 1.1  # store / pipeline
VALID_MS = 5.0
SERVE_RATIO = 0.8  # store serve / nginx
RSS_LIMIT_MIB = 64

WRK_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKSUMMARY %d %d %d %d %d %d %d %d %d %d\\n",
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


log = stderr_log("cache-bench")


# --------------------------------------------------------------------------
# running children


class Quiet:
    """Waits for a quiet machine: at the start until the 1-minute load average is below
    max_load (polling every minute, at most `budget` s); before each later section, at most
    2 minutes until other processes use < 0.5 CPU (sampled over 2 s while we are idle; the
    load average would count our own previous section)."""

    def __init__(self, max_load, budget):
        self.max_load = max_load
        self.deadline = time.time() + budget
        self.notes = []

    def start(self):
        while True:
            l = load1()
            if l < self.max_load:
                log(f"load average {l:.2f} < {self.max_load}: starting")
                return l, True
            if time.time() >= self.deadline:
                log(f"WARNING: load average still {l:.2f} >= {self.max_load}; measuring anyway")
                return l, False
            log(f"load average {l:.2f} >= {self.max_load}, waiting 60 s ...")
            time.sleep(60)

    def section(self, name, budget=120):
        end = time.time() + budget
        while True:
            b = busy_cores()
            if b < 0.5 or time.time() >= end:
                break
            log(f"{b:.2f} CPUs busy with other work, waiting 15 s before {name} ...")
            time.sleep(15)
        l = load1()
        self.notes.append(f"{name}: {b:.2f} CPUs busy elsewhere, load {l:.2f}")
        if b >= 0.5:
            log(f"WARNING: {b:.2f} CPUs busy with other work during {name}")
        return b


# --------------------------------------------------------------------------
# results


# --------------------------------------------------------------------------
# the environment: trees, Nix chroot store, cache, nginx, our server


class Env:
    def __init__(self, args):
        self.work = os.path.abspath(args.work)
        self.trees = os.path.abspath(args.trees)
        for p in (self.work, self.trees, os.path.abspath(args.stores_dir or self.work)):
            if os.path.commonpath([p, REPO]) == REPO:
                sys.exit(f"{p} is inside the repository; put benchmark data elsewhere")
        os.makedirs(self.work, exist_ok=True)
        self.chroot = os.path.join(self.work, "nix-chroot")
        self.cache = os.path.join(self.work, "binary-cache")
        self.serve_root = os.path.join(self.work, "serve-store")
        self.runs = os.path.join(os.path.abspath(args.stores_dir), "cache-bench-runs") if args.stores_dir else os.path.join(self.work, "runs")
        self.setup_home = os.path.join(self.work, "home-setup")
        with open(os.path.join(KEY_DIR, f"{KEY_NAME}.pub")) as f:
            self.pubkey = f.read().strip()
        self.seckey = os.path.join(KEY_DIR, f"{KEY_NAME}.sec")
        self.nix_config = ("build-users-group =\nsandbox = false\n"
                           "experimental-features = nix-command\nsubstituters =\n"
                           f"trusted-public-keys = {self.pubkey}")
        self.base_env = {k: v for k, v in os.environ.items()
                         if not k.startswith(("NIX_", "STORE_", "RUST_LOG", "XDG_"))}
        self.procs = Procs(log)  # what we started; stopped by PID at the end
        self.nginx_url = None
        self.serve_url = None
        self.run_counter = 0

    # environments ---------------------------------------------------------
    def home_env(self, home, nix):
        os.makedirs(home, exist_ok=True)
        e = dict(self.base_env, HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"),
                 XDG_CONFIG_HOME=os.path.join(home, ".config"),
                 XDG_DATA_HOME=os.path.join(home, ".local/share"))
        if nix:
            e["NIX_CONFIG"] = self.nix_config
        return e

    def nix_env(self):
        return self.home_env(self.setup_home, True)

    def fresh_dir(self, tag):
        """A new empty dir under WORK/runs (kept until the end of the run)."""
        self.run_counter += 1
        d = os.path.join(self.runs, f"{self.run_counter:03d}-{tag}")
        os.makedirs(d)
        return d

    # binary ----------------------------------------------------------------
    def snapshot_binary(self, store_bin):
        self.store_bin, self.bin_info = snapshot_binary(store_bin, self.work, REPO)

    def ours(self, root, *args):
        return [self.store_bin, "--root", root, "--store-dir", "/nix/store", *args]

    # data -------------------------------------------------------------------
    def ensure_trees(self, gen):
        big_ok = all(os.path.exists(os.path.join(self.trees, "big", f"blob{i}.bin"))
                     and os.path.getsize(os.path.join(self.trees, "big", f"blob{i}.bin")) == 128 * MIB
                     for i in range(8))
        if not (big_ok and os.path.exists(os.path.join(self.trees, "src", ".done"))):
            log(f"generating trees in {self.trees} with {gen} (a few minutes) ...")
            os.makedirs(self.trees, exist_ok=True)
            subprocess.run([sys.executable, gen, self.trees], check=True, stdout=subprocess.DEVNULL)

    def prepare_paths(self):
        """big, src and the chain in the Nix chroot store, pushed to the zstd cache.
        Idempotent: recorded in WORK/paths.json once complete."""
        marker = os.path.join(self.work, "paths.json")
        env = self.nix_env()
        if os.path.exists(marker):
            with open(marker) as f:
                p = json.load(f)
            if p.get("trees") == self.trees and all(
                    os.path.exists(os.path.join(self.cache, self.hash_part(x) + ".narinfo"))
                    for x in [p["big"], p["src"]] + p["chain"]):
                self.paths = p
                return
        log("adding big and src to the Nix chroot store ...")
        big = run_capture(["nix-store", "--store", self.chroot, "--add",
                           os.path.join(self.trees, "big")], env)
        src = run_capture(["nix-store", "--store", self.chroot, "--add",
                           os.path.join(self.trees, "src")], env)
        log(f"creating the {CHAIN_LEN}-path chain (builtins.toFile) ...")
        expr = (f"let f = n: prev: if n > {CHAIN_LEN} then prev else "
                "f (n + 1) (builtins.toFile \"chain-${toString n}\" "
                "\"link ${toString n}\\n${prev}\\n\"); in f 1 \"\"")
        top = json.loads(run_capture(["nix-instantiate", "--store", self.chroot, "--read-write-mode",
                                      "--eval", "--json", "-E", expr], env))
        closure = run_capture(["nix-store", "--store", self.chroot, "-qR", top], env).split()
        if len(closure) != CHAIN_LEN:
            raise RuntimeError(f"chain closure has {len(closure)} paths, expected {CHAIN_LEN}")
        log("nix copy --to file://…?compression=zstd (signed) ...")
        run_capture(["nix", "copy", "--store", self.chroot, "--to",
                     f"file://{self.cache}?compression=zstd&secret-key={self.seckey}",
                     big, src, top], env)
        self.paths = {"trees": self.trees, "big": big, "src": src, "chain_top": top,
                      "chain": closure}
        with open(marker, "w") as f:
            json.dump(self.paths, f)

    @staticmethod
    def hash_part(p):
        return os.path.basename(p).split("-", 1)[0]

    def nix_infos(self, paths, store=None):
        """{path: (narHash, narSize, refs)} from `nix path-info --json -r` on the chroot
        store (or `store`)."""
        out = run_capture(["nix", "path-info", "--json", "-r", "--store", store or self.chroot,
                           *paths], self.nix_env())
        return {i["path"]: (i["narHash"], i["narSize"], tuple(sorted(i["references"])))
                for i in json.loads(out)}

    def narinfo(self, hash_part, base=None):
        if base is None:
            with open(os.path.join(self.cache, hash_part + ".narinfo")) as f:
                text = f.read()
        else:
            text = http_get(f"{base}/{hash_part}.narinfo").decode()
        return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)

    # processes --------------------------------------------------------------
    def start_nginx(self, name="nginx", transfer="sendfile on;\n    tcp_nopush on;"):
        """nginx serving the cache dir; returns (pid, url). `name` is also its directory
        under WORK; `transfer` the directives for sending files."""
        d = os.path.join(self.work, name)
        p, url = start_nginx(self.procs, d, self.cache, transfer)
        log(f"{name} (pid {p.pid}) serving {self.cache} on {url}")
        if name == "nginx":
            self.nginx_pid, self.nginx_url = p.pid, url
        return p.pid, url

    def start_serve(self):
        errlog = os.path.join(self.work, "serve.stderr")
        errf = open(errlog, "w")
        p = subprocess.Popen(self.ours(self.serve_root, "serve", "--listen", "127.0.0.1:0"),
                             env=self.home_env(os.path.join(self.work, "home-serve"), False),
                             stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True)
        errf.close()
        self.procs.add("store serve", p)
        for _ in range(200):
            if p.poll() is not None:
                with open(errlog) as f:
                    raise RuntimeError(f"store serve exited ({p.returncode}): {f.read()}")
            with open(errlog) as f:
                m = re.search(r"listening on (http://\S+)", f.read())
            if m:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("store serve printed no address")
        self.serve_pid = p.pid
        self.serve_url = m.group(1).rstrip("/")
        log(f"store serve (pid {p.pid}) serving {self.serve_root} on {self.serve_url}")

    def stop_all(self):
        self.procs.stop_all()

    def cleanup_runs(self):
        if os.path.isdir(self.runs) and os.listdir(self.runs):
            log(f"removing {self.runs} ...")
            rm_tree(self.runs)
            os.sync()
            with open(os.path.join(self.work, ".last-cleanup"), "w") as f:
                f.write(f"{time.time()}\n")
        os.makedirs(self.runs, exist_ok=True)

    def settle(self, others=()):
        """ext4 won't reuse an inode freed < 60 s ago (< 360 s while its inode-table block
        is dirty, and creating files dirties those blocks again) and checks every such
        candidate, so creating 50,000 files soon after deleting 50,000 is several times
        slower (see bench/README.md). Waits until SETTLE s after our last cleanup, after
        bench/run.py's (its default work dir) and after those of the work dirs `others`."""
        last = 0.0
        for f in (os.path.join(self.work, ".last-cleanup"), RUN_PY_LAST_CLEANUP,
                  *(os.path.join(o, ".last-cleanup") for o in others)):
            try:
                with open(f) as fh:
                    last = max(last, float(fh.read()))
            except (OSError, ValueError):
                pass
        wait = last + SETTLE - time.time()
        if wait > 0:
            log(f"waiting {wait:.0f} s for ext4 to stop avoiding recently freed inodes ...")
            time.sleep(wait)


def proc_cpu_seconds(pids):
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / tck


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def vm_hwm_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# --------------------------------------------------------------------------
# correctness


def check_ours(env, root, tops, expect):
    """Our store at root holds exactly the closure Nix has, and the files on disk hash to
    the narHash."""
    out = run_capture(env.ours(root, "path-info", "--json", "-r", *tops), env.nix_env())
    got = {i["path"]: (i["narHash"], i["narSize"], tuple(sorted(i["references"])))
           for i in json.loads(out)}
    if got != expect:
        missing = sorted(set(expect) - set(got))[:3]
        extra = sorted(set(got) - set(expect))[:3]
        diff = [p for p in expect if p in got and got[p] != expect[p]][:3]
        raise Mismatch(f"store path-info in {root} differs from nix path-info: missing {missing}, "
                       f"extra {extra}, different {[(p, got[p], expect[p]) for p in diff]}")
    paths = sorted(expect)
    on_disk = run_capture(["nix", "hash", "path", "--type", "sha256",
                           *[os.path.join(root, p.lstrip("/")) for p in paths]],
                          env.nix_env()).split()
    bad = [p for p, h in zip(paths, on_disk) if h != expect[p][0]]
    if len(on_disk) != len(paths) or bad:
        raise Mismatch(f"files in {root} do not hash to the narHash: {bad[:3]}")


def check_nix_copy(env, fresh, tops, expect):
    got = env.nix_infos(tops, store=fresh)
    if got != expect:
        raise Mismatch(f"nix copy into {fresh} gave a different closure ({len(got)} vs {len(expect)} paths)")


def nar_sha256_hex(url):
    """sha256 and size of the decompressed NAR at url (curl | zstd -d)."""
    h = hashlib.sha256()
    n = 0
    curl = subprocess.Popen(["curl", "-sf", url], stdout=subprocess.PIPE)
    z = subprocess.Popen(["zstd", "-dc"], stdin=curl.stdout, stdout=subprocess.PIPE)
    curl.stdout.close()
    while True:
        b = z.stdout.read(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
    if z.wait() != 0 or curl.wait() != 0:
        raise Mismatch(f"cannot fetch/decompress {url}")
    return h.hexdigest(), n


def sri_to_hex(env, sri):
    return run_capture(["nix", "hash", "to-base16", sri], env.nix_env())


# --------------------------------------------------------------------------
# sections


def section_substitute(env, name, tops, reps, rows, rss_rows, pipe_rows):
    """Fresh store per run; store realise vs nix copy --from (and for big the pipeline)."""
    expect = env.nix_infos(tops)
    url = env.nginx_url
    keep = name != "big"  # many-file stores stay until the end (ext4 inode reuse)

    variants = {
        "store": lambda d: (env.ours(os.path.join(d, "root"), "realise", "--substituters", url,
                                     "--trusted-public-keys", env.pubkey, *tops),
                            env.home_env(os.path.join(d, "home"), False)),
        "nix": lambda d: (["nix", "copy", "--from", url, "--to", os.path.join(d, "root"), *tops],
                          env.home_env(os.path.join(d, "home"), True)),
    }
    nar_hex = None
    if name == "big":
        info = env.narinfo(env.hash_part(tops[0]))
        nar_url = f"{url}/{info['URL']}"
        nar_hex = sri_to_hex(env, expect[tops[0]][0])
        # tee's file is on the same filesystem as the fresh stores
        variants["pipe"] = lambda d: (
            ["bash", "-c", 'set -o pipefail; curl -s "$1" | zstd -d | tee "$2" | openssl dgst -sha256',
             "pipe", nar_url, os.path.join(d, "nar")], env.base_env)

    def setup(v, rnd):
        return env.fresh_dir(f"{name}-{v}")

    def teardown(v, d, _measured):
        if not keep:
            rm_tree(d)

    def check(v, d, out):
        root = os.path.join(d, "root")
        if v == "store":
            check_ours(env, root, tops, expect)
        elif v == "nix":
            check_nix_copy(env, root, tops, expect)
        elif v == "pipe":
            if out.split()[-1] != nar_hex:
                raise Mismatch(f"pipeline sha256 {out.split()[-1]} != narHash {nar_hex}")
            if os.path.getsize(os.path.join(d, "nar")) != expect[tops[0]][1]:
                raise Mismatch("pipeline file size != narSize")
        log(f"  {name}/{v}: result checked against nix path-info")

    r = bench_rounds(name, variants, reps, setup=setup, teardown=teardown, check=check)
    s, n = r["store"], r["nix"]
    ratio = n.median / s.median
    if name == "chain":
        rows.append((f"chain: {CHAIN_LEN} paths (closure of the last)", s, n, ratio,
                     f"nix/store ≥ {CHAIN_RATIO}", ratio >= CHAIN_RATIO))
    elif name == "src":
        rows.append(("src: 50,000 files, one path", s, n, ratio, f"nix/store ≥ {SRC_RATIO}",
                     ratio >= SRC_RATIO))
    else:
        p = r["pipe"]
        rows.append(("big: 1 GiB NAR, one path", s, n, ratio, "nix/store ≥ 1.0", ratio >= BIG_RATIO))
        size = expect[tops[0]][1]
        pipe_rows.append((p, s, size))
    rss_rows.append((name, s, n))


def section_valid(env, rows, rss_rows):
    top = env.paths["chain_top"]
    root = env.serve_root
    out_json = os.path.join(env.work, "hyperfine-valid.json")
    ours = env.ours(root, "realise", "--substituters", env.nginx_url or "http://127.0.0.1:9",
                    "--trusted-public-keys", env.pubkey, top)
    nixc = ["nix-store", "--store", env.chroot, "--realise", top]
    # sanity: the path is valid and realise makes no request (a dead substituter works too)
    run_capture(env.ours(root, "realise", "--substituters", "http://127.0.0.1:9",
                         "--trusted-public-keys", env.pubkey, top), env.nix_env())
    e = env.nix_env()
    q = lambda c: " ".join("'" + a.replace("'", "'\\''") + "'" for a in c)
    subprocess.run(["hyperfine", "-N", "--style", "none", "--warmup", "20", "--min-runs", "200",
                    "--export-json", out_json, q(ours), q(nixc)], env=e, check=True,
                   stdout=subprocess.DEVNULL)
    with open(out_json) as f:
        res = json.load(f)["results"]
    s, n = Result(), Result()
    s.times, n.times = res[0]["times"], res[1]["times"]
    s.cpu = [res[0]["user"] + res[0]["system"]]  # hyperfine gives the mean per run
    n.cpu = [res[1]["user"] + res[1]["system"]]
    # peak RSS for the table: a few runs through GNU time
    for _ in range(3):
        s.rss_kib.append(run_measured(ours, e)[1])
        n.rss_kib.append(run_measured(nixc, e)[1])
    ms = s.median * 1000
    rows.append(("valid: realise an already-valid path (hyperfine, ms)", s, n, n.median / s.median,
                 f"< {VALID_MS} ms (vs `nix-store --store CHROOT -r`)", ms < VALID_MS))
    rss_rows.append(("valid", s, n))


def wrk(url, conns, secs, lua):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = run_capture(["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "-s", lua, url], None)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / secs
    m = re.search(r"WRKSUMMARY (.*)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    dur, reqs, nbytes, ec, er, ew, es, et, p50, p99 = (int(x) for x in m.group(1).split())
    if ec or es:
        raise RuntimeError(f"wrk {url}: {ec} connect errors, {es} bad statuses\n{out}")
    return {"rps": reqs / (dur / 1e6), "mbs": nbytes / (dur / 1e6) / 1e6, "reqs": reqs,
            "p50": p50 / 1000, "p99": p99 / 1000, "read_err": er, "timeouts": et,
            "client_cpu": client_cpu}


def section_serve(env, reps, serve_rows):
    big = env.paths["big"]
    h = env.hash_part(big)
    n_info = env.narinfo(h, env.nginx_url)
    s_info = env.narinfo(h, env.serve_url)
    for k in ("StorePath", "NarHash", "NarSize", "References"):
        if n_info.get(k) != s_info.get(k):
            raise Mismatch(f"served narinfo {k}: nginx {n_info.get(k)!r}, store serve {s_info.get(k)!r}")
    urls = {"nginx": f"{env.nginx_url}/{n_info['URL']}", "store": f"{env.serve_url}/{s_info['URL']}"}
    nar_hex = sri_to_hex(env, n_info["NarHash"])
    sizes = {}
    for who, u in urls.items():
        log(f"fetching the NAR of big from {who} once (checks it; warms store serve's NAR cache) ...")
        t0 = time.perf_counter()
        got, n = nar_sha256_hex(u)
        log(f"  {who}: {time.perf_counter() - t0:.1f} s")
        if got != nar_hex or n != int(n_info["NarSize"]):
            raise Mismatch(f"NAR from {who} ({u}) hashes to {got} ({n} B), narinfo says {nar_hex}")
        sizes[who] = int(run_capture(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", u], None))
    # informational: nginx copying through user space instead of sendfile (on loopback the
    # receiving side of sendfile'd page-cache pages costs the client more)
    copy_pid, copy_url = env.start_nginx("nginx-nosendfile", "sendfile off;\n    output_buffers 2 1m;")
    urls["nginx-nosendfile"] = f"{copy_url}/{n_info['URL']}"
    lua = os.path.join(env.work, "wrk-summary.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    pids = {"nginx": lambda: children(env.nginx_pid) + [env.nginx_pid],
            "nginx-nosendfile": lambda: children(copy_pid) + [copy_pid],
            "store": lambda: [env.serve_pid]}
    tests = [
        ("narinfo", {"nginx": f"{env.nginx_url}/{h}.narinfo", "store": f"{env.serve_url}/{h}.narinfo"}, 64),
        ("nar", urls, 4),
    ]
    res = {(t, w): [] for t, u, _ in tests for w in u}
    for rnd in range(reps + 1):
        for t, u, conns in tests:
            for who in u:
                secs = 2 if rnd == 0 else 8
                c0 = proc_cpu_seconds(pids[who]())
                r = wrk(u[who], conns, secs, lua)
                r["cpu"] = (proc_cpu_seconds(pids[who]()) - c0) / secs
                tag = "warm-up" if rnd == 0 else f"rep {rnd}/{reps}"
                log(f"serve {t:<7} {who:<16} {tag:<9} {r['rps']:9.0f} req/s {r['mbs']:7.1f} MB/s "
                    f"p99 {r['p99']:7.2f} ms CPUs server {r['cpu']:.2f} wrk {r['client_cpu']:.2f}  "
                    f"load {load1():.2f}")
                if rnd > 0:
                    res[(t, who)].append(r)

    def med(t, w, k):
        return statistics.median(x[k] for x in res[(t, w)])

    def row(metric, t, w, key, unit, target):
        serve_rows.append({"metric": metric, "ng": med(t, w, key), "st": med(t, "store", key),
                           "unit": unit, "target": target,
                           "cpu": (med(t, w, "cpu"), med(t, "store", "cpu")),
                           "client": (med(t, w, "client_cpu"), med(t, "store", "client_cpu")),
                           "p99": (med(t, w, "p99"), med(t, "store", "p99"))})

    row("narinfo req/s (wrk -t1 -c64 -d8s, same narinfo)", "narinfo", "nginx", "rps", "req/s", True)
    row(f"NAR of big MB/s (wrk -t1 -c4 -d8s; nginx file {sizes['nginx'] / MIB:.0f} MiB, "
        f"ours {sizes['store'] / MIB:.0f} MiB)", "nar", "nginx", "mbs", "MB/s", True)
    row("NAR of big MB/s vs nginx with `sendfile off; output_buffers 2 1m;` (info)",
        "nar", "nginx-nosendfile", "mbs", "MB/s", False)
    env.serve_hwm = vm_hwm_mib(env.serve_pid)
    env.serve_sizes = sizes
    # NarSize-equivalent rate: what a client gets out of it
    env.nar_equiv = {w: med("nar", w, "mbs") * int(n_info["NarSize"]) / sizes[w] for w in sizes}


# --------------------------------------------------------------------------


def machine_info(env):
    info = {}
    info["nproc"] = run_capture(["nproc"], None)
    model, flags = "?", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    info["cpu"] = model + (" (sha_ni)" if "sha_ni" in flags else " (no sha_ni)")
    with open("/proc/meminfo") as f:
        info["mem"] = f"{int(f.readline().split()[1]) / MIB:.1f} GiB"
    info["kernel"] = platform.release()
    info["nix"] = run_capture(["nix", "--version"], env.nix_env())
    nginx_v = subprocess.run(["nginx", "-v"], stderr=subprocess.PIPE, text=True).stderr.strip()
    info["nginx"] = nginx_v.replace("nginx version: ", "")
    info["curl"] = run_capture(["curl", "--version"], None).splitlines()[0]
    info["zstd"] = run_capture(["zstd", "--version"], None)
    info["openssl"] = run_capture(["openssl", "version"], None)
    wrk_v = subprocess.run(["wrk", "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    info["wrk"] = wrk_v.stdout.splitlines()[0].split(" Copyright")[0]
    info["hyperfine"] = run_capture(["hyperfine", "--version"], None)
    info["store commit"] = commit_info(REPO)
    info["store binary"] = env.bin_info
    info["work dir"] = where(env.work)
    info["fresh stores in"] = where(env.runs)
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/store-bench/cache",
                    help="everything this benchmark makes (default /tmp/store-bench/cache)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (after one warm-up)")
    ap.add_argument("--only", choices=SECTIONS, help="only this part")
    ap.add_argument("--stores-dir", metavar="DIR",
                    help="put the fresh stores (and the pipeline's file) in DIR/cache-bench-runs instead of "
                         "WORK/runs (e.g. a tmpfs, to take the disk out); removed at the start and the end")
    ap.add_argument("--trees", default=DEFAULT_TREES, help="where big/ and src/ are (made if missing)")
    ap.add_argument("--gen-trees", default=GEN_TREES)
    ap.add_argument("--store-bin", default=os.path.join(REPO, "target/release/store"),
                    help="our binary (cargo build --release if missing)")
    ap.add_argument("--wait-quiet", type=float, default=1500, metavar="SECONDS",
                    help="wait up to this long at the start for the 1-min load average to drop "
                         "below --max-load (default 1500)")
    ap.add_argument("--max-load", type=float, default=1.0)
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    for tool in ("nix", "nginx", "wrk", "hyperfine", "curl", "zstd", "openssl", GNU_TIME):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed")

    env = Env(args)
    sections = [args.only] if args.only else SECTIONS
    env.snapshot_binary(os.path.abspath(args.store_bin))
    env.ensure_trees(args.gen_trees)
    env.cleanup_runs()
    rows, rss_rows, pipe_rows, serve_rows = [], [], [], []
    quiet = Quiet(args.max_load, args.wait_quiet)
    try:
        try:
            env.prepare_paths()
            env.start_nginx()
            if "serve" in sections or "valid" in sections:
                tops = [env.paths["big"], env.paths["src"], env.paths["chain_top"]]
                log("our store for `store serve` / `valid`: realise big, src, chain from nginx "
                    "(no-op if done) ...")
                run_capture(env.ours(env.serve_root, "realise", "--substituters", env.nginx_url,
                                     "--trusted-public-keys", env.pubkey, *tops), env.nix_env())
                check_ours(env, env.serve_root, tops, env.nix_infos(tops))
            if "serve" in sections:
                env.start_serve()
            env.settle()
            load_before, was_quiet = quiet.start()
            info = machine_info(env)
            t_start = time.time()
            for sec in sections:
                quiet.section(sec)
                log(f"== {sec} ==")
                if sec == "chain":
                    section_substitute(env, "chain", [env.paths["chain_top"]], args.reps, rows, rss_rows, pipe_rows)
                elif sec in ("src", "big"):
                    section_substitute(env, sec, [env.paths[sec]], args.reps, rows, rss_rows, pipe_rows)
                elif sec == "serve":
                    section_serve(env, args.reps, serve_rows)
                elif sec == "valid":
                    section_valid(env, rows, rss_rows)
            elapsed = time.time() - t_start
        except Mismatch as e:
            print(f"\n**MISMATCH — comparison is not apples to apples: {e}**", flush=True)
            sys.exit(2)
    finally:
        env.stop_all()
    load_after = load1()

    # ---- report -----------------------------------------------------------------
    failed = False
    out = ["## Machine\n"]
    for k, v in info.items():
        out.append(f"- {k}: {v}")
    out.append(f"- load average (1 min) at start / after: {load_before:.2f} / {load_after:.2f}"
               + ("" if was_quiet else f" (never got below {args.max_load}: measured anyway)"))
    out.append("- other work per section (CPUs busy elsewhere, sampled 2 s before it): "
               + "; ".join(quiet.notes))
    out.append(f"- reps: {args.reps} timed (+1 warm-up), runs interleaved, warm page cache, "
               f"`sync` before every run; wall time {elapsed:.0f} s")
    out.append("")
    if rows:
        out.append("## Substitution into a fresh store (from nginx on 127.0.0.1, zstd cache)\n")
        out.append("| operation | store median s (min) | nix median s (min) | ratio nix/store | target | pass/fail |")
        out.append("|---|---|---|---|---|---|")
        for op, s, n, ratio, target, ok in rows:
            failed |= not ok
            if op.startswith("valid"):
                sm, sn = f"{s.median * 1000:.2f} ms ({s.min * 1000:.2f})", f"{n.median * 1000:.2f} ms ({n.min * 1000:.2f})"
            else:
                sm, sn = f"{s.median:.3f} ({s.min:.3f})", f"{n.median:.3f} ({n.min:.3f})"
            out.append(f"| {op} | {sm} | {sn} | {ratio:.2f} | {target} | {'PASS' if ok else 'FAIL'} |")
        for p, s, size in pipe_rows:
            ratio = s.median / p.median
            ok = ratio <= BIG_PIPE
            failed |= not ok
            out.append(f"| big vs `curl \\| zstd -d \\| tee \\| openssl dgst -sha256` | {s.median:.3f} ({s.min:.3f}) | "
                       f"pipeline {p.median:.3f} ({p.min:.3f}) | store/pipeline {ratio:.2f} | "
                       f"≤ {BIG_PIPE} | {'PASS' if ok else 'FAIL'} |")
        out.append("")
        out.append("`nix` = `nix copy --from http://… --to FRESH` (fresh HOME); for `valid`: "
                   "`nix-store --store CHROOT --realise` (for reference only).")
        out.append("")
    if pipe_rows:
        p, s, size = pipe_rows[0]
        out.append("### big: baseline pipeline\n")
        out.append("| pipeline | median s (min) | NAR MB/s | CPU s (user+sys, all stages) |")
        out.append("|---|---|---|---|")
        out.append(f"| `curl -s URL \\| zstd -d \\| tee FILE \\| openssl dgst -sha256` | {p.median:.3f} ({p.min:.3f}) | "
                   f"{size / p.median / 1e6:.0f} | {p.cpu_median:.2f} |")
        out.append(f"| `store realise` | {s.median:.3f} ({s.min:.3f}) | {size / s.median / 1e6:.0f} | {s.cpu_median:.2f} |")
        out.append("")
    if serve_rows:
        out.append("## Serving: `store serve` vs nginx (static files of the same cache)\n")
        out.append("| metric | nginx median | store serve median | ratio store/nginx | target | pass/fail | "
                   "server CPUs nginx / store | wrk CPUs nginx / store | p99 latency ms nginx / store |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in serve_rows:
            ratio = r["st"] / r["ng"]
            ok = ratio >= SERVE_RATIO
            if r["target"]:
                failed |= not ok
                target, pf = f"≥ {SERVE_RATIO}", "PASS" if ok else "FAIL"
            else:
                target, pf = "(info)", "—"
            out.append(f"| {r['metric']} | {r['ng']:,.0f} {r['unit']} | {r['st']:,.0f} {r['unit']} | "
                       f"{ratio:.2f} | {target} | {pf} | {r['cpu'][0]:.2f} / {r['cpu'][1]:.2f} | "
                       f"{r['client'][0]:.2f} / {r['client'][1]:.2f} | {r['p99'][0]:.1f} / {r['p99'][1]:.1f} |")
        out.append("")
        out.append(f"NAR rate in uncompressed NAR bytes (wire MB/s × NarSize / FileSize): nginx "
                   f"{env.nar_equiv['nginx']:.0f} MB/s, store serve {env.nar_equiv['store']:.0f} MB/s. "
                   f"`store serve` peak RSS (VmHWM): {env.serve_hwm:.1f} MiB. CPUs = (utime + stime) / "
                   f"duration, 1.00 = one core busy; the two servers and wrk share the "
                   f"{os.cpu_count()} cores, and wrk near 1.00 means the client is the limit.")
        out.append("")
    if rss_rows:
        out.append("## Peak RSS (max over all runs incl. warm-up; GNU time %M) and CPU time (user+sys, median)\n")
        out.append("| operation | store MiB | nix MiB | target (store) | pass/fail | store CPU s | nix CPU s |")
        out.append("|---|---|---|---|---|---|---|")
        for name, s, n in rss_rows:
            if name == "big":
                ok = s.peak_rss_mib < RSS_LIMIT_MIB
                failed |= not ok
                target, pf = f"< {RSS_LIMIT_MIB} MiB", "PASS" if ok else "FAIL"
            else:
                target, pf = "—", "—"
            out.append(f"| realise {name} | {s.peak_rss_mib:.1f} | {n.peak_rss_mib:.1f} | {target} | {pf} | "
                       f"{s.cpu_median:.3f} | {n.cpu_median:.3f} |")
        out.append("")
    out.append("Overall: " + ("all targets met" if not failed else "SOME TARGETS FAILED"))
    print("\n".join(out), flush=True)
    env.cleanup_runs()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
