#!/usr/bin/env python3
"""Benchmark our `store` CLI against Nix 2.8 on the same machine, in the same run.

Measures (warm page cache, one warm-up run per command, then --reps repetitions,
median and min reported, store and nix repetitions interleaved):

  store hash path T      vs  nix hash path T
  store nar dump T       vs  nix-store --dump T          (stdout -> /dev/null)
  store add T            vs  nix-store --store DIR --add T   (fresh DIR every run)

for T in {big, src} as made by bench/gen_trees.py, plus the
single-core SHA-256 reference (`openssl dgst -sha256` over the NAR of big, and
`openssl speed -evp sha256`), and the peak RSS of every measured child.

Before timing anything it checks that both tools produce the same results
(hash strings, NAR bytes, store paths with --store-dir /nix/store) and exits
with status 2 if they don't. Exit status 1 means a performance target failed.

usage: python3 bench/run.py [--trees DIR] [--reps N] [--only big|src]
                            [--store-bin PATH] [--build] [--work DIR] [--stores-dir DIR]
                            [--wait-quiet SECONDS] [--max-load L]
See bench/README.md.
"""

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from common import Mismatch, Result, load1, rm_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN_TREES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen_trees.py")
MIB = 1 << 20
RSS_LIMIT_MIB = 64

NIX_CONFIG = "build-users-group =\nsandbox = false\nexperimental-features = nix-command"


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# running and measuring children


GNU_TIME = "/usr/bin/time"


def run_measured(cmd, env, stdout=subprocess.DEVNULL, cwd=None):
    """Run cmd, return (wall seconds, peak RSS KiB, CPU seconds user+sys).

    The peak RSS is the child's ru_maxrss (KiB on Linux). It is taken through GNU time
    (`/usr/bin/time -f %M`), not from our own wait4(): Linux carries the RSS high-water
    mark of the process that forked over exec, so a child forked from this Python
    interpreter would never report less than the interpreter's ~20 MiB. GNU time is a
    small C program (~1 MiB), and its start-up is part of the wall time of every
    command alike (about a millisecond)."""
    with tempfile.NamedTemporaryFile(mode="r") as rss_f, tempfile.TemporaryFile() as errf:
        full = [GNU_TIME, "-f", "%M %U %S", "-o", rss_f.name, *cmd]
        t0 = time.perf_counter()
        p = subprocess.Popen(full, env=env, stdout=stdout, stderr=errf, cwd=cwd)
        p.wait()
        t1 = time.perf_counter()
        errf.seek(0)
        err = errf.read().decode(errors="replace")
        if p.returncode != 0:
            raise RuntimeError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{err}")
        rss, user, sys_ = rss_f.read().splitlines()[-1].split()
    return t1 - t0, int(rss), float(user) + float(sys_)


def run_capture(cmd, env, cwd=None):
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(
            f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.decode(errors='replace')}"
        )
    return r.stdout.decode().strip()


def sha256_of_stdout(cmd, env):
    """sha256 and length of a command's stdout, streamed (never held in memory)."""
    h = hashlib.sha256()
    n = 0
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while True:
        b = p.stdout.read(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
    p.stdout.close()
    err = p.stderr.read().decode(errors="replace")
    if p.wait() != 0:
        raise RuntimeError(f"command failed: {' '.join(cmd)}\n{err}")
    return h.hexdigest(), n


# ext4 without a journal (as on this VM) will not reuse an inode freed less than 60 s ago
# (RECENTCY_MIN in fs/ext4/ialloc.c), or 360 s ago while its inode-table block is dirty
# (+RECENTCY_DIRTY) -- and creating new files dirties exactly those blocks again -- and
# checking each candidate costs a buffer lookup: right after removing a store of 50,000
# files, creating 50,000 new ones becomes 5-10x slower. So the fresh stores are all kept
# until the end of the run, and a run starts at least SETTLE s after the last removal
# (recorded in WORK/.last-cleanup).
SETTLE = 370
STORES = "stores"


def cleanup_stores(work, d):
    """Remove every store left in d, sync, and record when (in WORK/.last-cleanup)."""
    if os.path.isdir(d) and os.listdir(d):
        log(f"removing the stores in {d} ...")
        rm_tree(d)
        os.sync()
        with open(os.path.join(work, ".last-cleanup"), "w") as f:
            f.write(f"{time.time()}\n")
    os.makedirs(d, exist_ok=True)
    return d


def settle(work):
    try:
        with open(os.path.join(work, ".last-cleanup")) as f:
            last = float(f.read())
    except (OSError, ValueError):
        return
    wait = last + SETTLE - time.time()
    if wait > 0:
        log(f"waiting {wait:.0f} s for ext4 to stop avoiding the inodes just freed ...")
        time.sleep(wait)


def bench_pair(label, variants, reps, setup=None, teardown=None):
    """variants: {name: fn(run_index) -> cmd-spec}; cmd-spec = (cmd, env, stdout).

    One warm-up per variant, then `reps` rounds, variants interleaved so that
    background noise hits both sides alike. setup/teardown run untimed around
    every single run (e.g. fresh store dir, removal, sync)."""
    QUIET.gate()
    res = {name: ([], [], []) for name in variants}
    for rnd in range(reps + 1):
        for name, mk in variants.items():
            ctx = setup(name) if setup else None
            cmd, env, out = mk(ctx)
            os.sync()
            t, rss, cpu = run_measured(cmd, env, stdout=out)
            if teardown:
                teardown(name, ctx)
            if rnd > 0:  # round 0 is the warm-up
                res[name][0].append(t)
                res[name][2].append(cpu)
            res[name][1].append(rss)
            tag = "warm-up" if rnd == 0 else f"rep {rnd}/{reps}"
            log(f"{label:<22} {name:<5} {tag:<9} {t:8.3f} s  cpu {cpu:7.2f} s  {rss / 1024:6.1f} MiB"
                f"  load {load1():.2f}")
    return {name: Result(*v) for name, v in res.items()}


# --------------------------------------------------------------------------
# environment


class Quiet:
    """Waits, before each group of measurements, for the 1-minute load average to drop
    to max_load, spending at most `budget` seconds waiting over the whole run."""

    def __init__(self):
        self.max_load = 1.0
        self.deadline = 0.0
        self.peak = 0.0

    def gate(self):
        while True:
            l = load1()
            if l <= self.max_load:
                break
            if time.time() >= self.deadline:
                log(f"WARNING: load average {l:.2f} > {self.max_load}; numbers will be noisy")
                break
            log(f"load average {l:.2f} > {self.max_load}, waiting 30 s ...")
            time.sleep(30)
        self.peak = max(self.peak, l)
        return l


QUIET = Quiet()


def machine_info(store_bin, nix_env):
    info = {}
    info["nproc"] = run_capture(["nproc"], None)
    model = "?"
    flags = set()
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
    info["nix"] = run_capture(["nix", "--version"], nix_env)
    info["openssl"] = run_capture(["openssl", "version"], None)
    try:
        commit = run_capture(["git", "rev-parse", "--short", "HEAD"], None, cwd=REPO)
        dirty = run_capture(["git", "status", "--porcelain", "--untracked-files=no"], None, cwd=REPO)
        info["store commit"] = commit + (" (+ uncommitted changes)" if dirty else "")
    except Exception as e:  # not a git checkout
        info["store commit"] = f"unknown ({e})"
    info["store binary"] = store_bin
    return info


def ensure_store_bin(path, build):
    if os.path.exists(path) and not build:
        return path
    log(f"cargo build --release" + ("" if build else f" ({path} missing)"))
    subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    if not os.path.exists(path):
        sys.exit(f"no binary at {path} after cargo build --release")
    return path


def ensure_trees(trees, gen):
    done_big = all(
        os.path.exists(os.path.join(trees, "big", f"blob{i}.bin"))
        and os.path.getsize(os.path.join(trees, "big", f"blob{i}.bin")) == 128 * MIB
        for i in range(8)
    )
    done_src = os.path.exists(os.path.join(trees, "src", ".done"))
    if not (done_big and done_src):
        log(f"generating trees in {trees} with {gen} (a few minutes) ...")
        os.makedirs(trees, exist_ok=True)
        subprocess.run([sys.executable, gen, trees], check=True, stdout=subprocess.DEVNULL)


def openssl_speed():
    """Single-core `openssl speed -evp sha256`, best block size, in MB/s (10^6)."""
    out = run_capture(["openssl", "speed", "-seconds", "2", "-evp", "sha256"], None)
    # last line: "sha256  a.bck  b.bck ... f.bck" in 1000s of bytes per second
    for line in reversed(out.splitlines()):
        if line.lower().startswith("sha256"):
            vals = [float(v.rstrip("k")) for v in line.split()[1:]]
            return max(vals) / 1000.0, vals
    raise RuntimeError("cannot parse openssl speed output:\n" + out)


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", default="/tmp/store-bench/trees", help="where big/ and src/ live (generated if missing)")
    ap.add_argument("--work", default="/tmp/store-bench/work", help="scratch dir: fresh stores, NAR of big, HOME")
    ap.add_argument("--stores-dir", metavar="DIR",
                    help="where the fresh stores for `add` go (default WORK/stores; e.g. /dev/shm/x "
                         "to take the filesystem out of the comparison)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per command (after one warm-up)")
    ap.add_argument("--only", choices=["big", "src"], help="only this tree")
    ap.add_argument("--store-bin", default=os.path.join(REPO, "target/release/store"),
                    help="our binary (built with cargo build --release if missing)")
    ap.add_argument("--build", action="store_true",
                    help="run cargo build --release first even if the binary exists")
    ap.add_argument("--gen-trees", default=GEN_TREES, help="tree generator script")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="wait (up to SECONDS in all) before each group of measurements for the "
                         "1-min load average to drop to --max-load")
    ap.add_argument("--max-load", type=float, default=1.0)
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    if not os.access(GNU_TIME, os.X_OK):
        sys.exit(f"{GNU_TIME} (GNU time) is needed to measure peak RSS")

    store_bin = ensure_store_bin(os.path.abspath(args.store_bin), args.build)
    trees = os.path.abspath(args.trees)
    work = os.path.abspath(args.work)
    for p in (trees, work, os.path.abspath(args.stores_dir or work)):
        if os.path.commonpath([p, REPO]) == REPO:
            sys.exit(f"{p} is inside the repository; put benchmark data elsewhere")
    ensure_trees(trees, args.gen_trees)
    os.makedirs(work, exist_ok=True)
    # A private copy: other people may rebuild target/release/store during the run.
    snap = os.path.join(work, "store-under-test")
    shutil.copy2(store_bin, snap)
    with open(snap, "rb") as f:
        bin_digest = hashlib.sha256(f.read()).hexdigest()[:16]
    info_bin = f"{store_bin} (copied to {snap}; sha256 {bin_digest}…, built {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(os.path.getmtime(store_bin)))})"
    store_bin = snap
    stores = cleanup_stores(work, os.path.abspath(args.stores_dir or os.path.join(work, STORES)))
    home = tempfile.mkdtemp(prefix="home.", dir=work)

    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("NIX_", "STORE_", "RUST_LOG"))}
    base_env["HOME"] = home
    base_env["XDG_CONFIG_HOME"] = os.path.join(home, ".config")
    base_env["XDG_CACHE_HOME"] = os.path.join(home, ".cache")
    nix_env = dict(base_env, NIX_CONFIG=NIX_CONFIG)
    store_env = dict(base_env)

    settle(work)
    QUIET.max_load = args.max_load
    QUIET.deadline = time.time() + args.wait_quiet
    load_before = QUIET.gate()
    info = machine_info(store_bin, nix_env)
    info["store binary"] = info_bin
    for label, p in (("trees on", trees), ("fresh stores on", stores)):
        fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", p],
                            stdout=subprocess.PIPE, text=True).stdout.strip()
        info[label] = f"{p} ({fs or '?'})"
    tree_names = [args.only] if args.only else ["big", "src"]
    t_start = time.time()

    rows = []  # (op, tree, Result store, Result nix)
    failed = False
    nar_big_size = None

    # ---- correctness: same answers as nix ----------------------------------
    try:
        for t in tree_names:
            tree = os.path.join(trees, t)
            log(f"checking outputs on {t} ...")
            ours = run_capture([store_bin, "hash", "path", tree], store_env)
            theirs = run_capture(["nix", "hash", "path", tree], nix_env)
            if ours != theirs:
                raise Mismatch(f"hash path {t}: store says {ours!r}, nix says {theirs!r}")
            h_ours, n_ours = sha256_of_stdout([store_bin, "nar", "dump", tree], store_env)
            h_nix, n_nix = sha256_of_stdout(["nix-store", "--dump", tree], nix_env)
            if (h_ours, n_ours) != (h_nix, n_nix):
                raise Mismatch(f"nar dump {t}: store gives sha256 {h_ours} ({n_ours} B), "
                               f"nix gives sha256 {h_nix} ({n_nix} B)")
            b16 = run_capture(["nix", "hash", "path", "--base16", tree], nix_env)
            if b16 != h_nix:
                raise Mismatch(f"nar dump {t}: sha256 of NAR {h_nix} != nix hash path --base16 {b16}")
            d1 = os.path.join(stores, f"check-{t}-store")
            d2 = os.path.join(stores, f"check-{t}-nix")
            p_ours = run_capture([store_bin, "--root", d1, "--store-dir", "/nix/store", "add", tree], store_env)
            p_nix = run_capture(["nix-store", "--store", d2, "--add", tree], nix_env)
            if p_ours != p_nix:
                raise Mismatch(f"add {t}: store says {p_ours!r}, nix says {p_nix!r}")
            if not p_ours.startswith("/nix/store/"):
                raise Mismatch(f"add {t}: unexpected path {p_ours!r}")
            rel = p_ours[len("/"):]
            copied = os.path.join(d1, rel)
            if not os.path.lexists(copied):
                raise Mismatch(f"add {t}: {copied} does not exist after store add")
            h_copy = run_capture(["nix", "hash", "path", copied], nix_env)
            if h_copy != theirs:
                raise Mismatch(f"add {t}: the copy in our store hashes to {h_copy}, source to {theirs}")
            log(f"  {t}: hash {ours}, NAR {n_ours} B, path {p_ours}: identical")
            if t == "big":
                nar_big_size = n_nix
    except Mismatch as e:
        print(f"\n**MISMATCH — comparison is not apples to apples: {e}**", flush=True)
        sys.exit(2)

    # ---- single-core SHA-256 references -----------------------------------
    log("openssl speed -evp sha256 (single core) ...")
    speed_mbs, _ = openssl_speed()
    nar_big = os.path.join(work, "big.nar")
    dgst = None
    if "big" in tree_names:
        log("nix-store --dump big > big.nar ...")
        with open(nar_big, "wb") as f:
            subprocess.run(["nix-store", "--dump", os.path.join(trees, "big")], env=nix_env, stdout=f, check=True)
        if os.path.getsize(nar_big) != nar_big_size:
            print("\n**MISMATCH: big.nar size differs from the streamed NAR**", flush=True)
            sys.exit(2)
        r = bench_pair("openssl dgst big.nar",
                       {"ssl": lambda _: (["openssl", "dgst", "-sha256", nar_big], base_env, subprocess.DEVNULL)},
                       args.reps)
        dgst = r["ssl"]

    # ---- timings -----------------------------------------------------------
    sha_limit = None  # seconds for the NAR of big at the single-core SHA-256 rate
    if dgst is not None:
        sha_limit = dgst.median
        sha_speed_limit = nar_big_size / (speed_mbs * 1e6)

    def target_for(op, t, s, n):
        ratio = n.median / s.median
        if t == "big" and op in ("hash path", "nar dump"):
            lim = 1.1 * sha_limit
            ok = s.median <= lim and ratio >= 1.0
            vs_speed = s.median / sha_speed_limit
            text = (f"≤ 1.1× SHA-256 limit ({lim:.3f} s) and ≥ nix; "
                    f"is {s.median / sha_limit:.2f}× dgst, {vs_speed:.2f}× speed")
            return text, ok
        ok = ratio >= 1.5
        return "nix/store ≥ 1.5", ok

    for t in tree_names:
        tree = os.path.join(trees, t)
        # hash path
        r = bench_pair(f"hash path {t}", {
            "store": lambda _: ([store_bin, "hash", "path", tree], store_env, subprocess.DEVNULL),
            "nix": lambda _: (["nix", "hash", "path", tree], nix_env, subprocess.DEVNULL),
        }, args.reps)
        rows.append(("hash path", t, r["store"], r["nix"]))
        # nar dump -> /dev/null
        r = bench_pair(f"nar dump {t}", {
            "store": lambda _: ([store_bin, "nar", "dump", tree], store_env, subprocess.DEVNULL),
            "nix": lambda _: (["nix-store", "--dump", tree], nix_env, subprocess.DEVNULL),
        }, args.reps)
        rows.append(("nar dump", t, r["store"], r["nix"]))

        # add into a fresh store every run (all removed at the end, see SETTLE)
        counter = iter(range(1 << 30))

        def setup(name):
            return os.path.join(stores, f"add-{t}-{name}-{next(counter)}")

        r = bench_pair(f"add {t}", {
            "store": lambda d: ([store_bin, "--root", d, "--store-dir", "/nix/store", "add", tree],
                                store_env, subprocess.DEVNULL),
            "nix": lambda d: (["nix-store", "--store", d, "--add", tree], nix_env, subprocess.DEVNULL),
        }, args.reps, setup=setup)
        rows.append(("add", t, r["store"], r["nix"]))

    elapsed = time.time() - t_start
    load_after = load1()

    # ---- report ------------------------------------------------------------
    out = []
    out.append("## Machine\n")
    for k, v in info.items():
        out.append(f"- {k}: {v}")
    out.append(f"- load average (1 min) before / peak at a group start / after: "
               f"{load_before:.2f} / {QUIET.peak:.2f} / {load_after:.2f}")
    out.append(f"- reps: {args.reps} timed (+1 warm-up) per command, warm page cache, "
               f"store/nix runs interleaved; wall time {elapsed:.0f} s")
    out.append("")
    out.append("## Time\n")
    out.append("| operation | tree | store median s (min) | nix median s (min) | ratio nix/store (of mins) | target | pass/fail |")
    out.append("|---|---|---|---|---|---|---|")
    nix_names = {"hash path": "nix hash path", "nar dump": "nix-store --dump",
                 "add": "nix-store --store DIR --add"}
    for op, t, s, n in rows:
        text, ok = target_for(op, t, s, n)
        failed |= not ok
        out.append(f"| store {op} (vs {nix_names[op]}) | {t} | {s.median:.3f} ({s.min:.3f}) | "
                   f"{n.median:.3f} ({n.min:.3f}) | {n.median / s.median:.2f} ({n.min / s.min:.2f}) | {text} | "
                   f"{'PASS' if ok else 'FAIL'} |")
    if dgst is not None:
        mbs = nar_big_size / dgst.median / 1e6
        out.append(f"| ref: openssl dgst -sha256 (NAR of big, {nar_big_size / MIB:.0f} MiB) | big | "
                   f"{dgst.median:.3f} ({dgst.min:.3f}) | — | — | SHA-256 limit used above: {mbs:.0f} MB/s | — |")
        out.append(f"| ref: openssl speed -evp sha256 (single core, best block size) | big | "
                   f"{sha_speed_limit:.3f} (computed) | — | — | {speed_mbs:.0f} MB/s | — |")
    else:
        out.append(f"| ref: openssl speed -evp sha256 (single core, best block size) | — | — | — | — | "
                   f"{speed_mbs:.0f} MB/s | — |")
    out.append("")
    if nar_big_size:
        out.append("Throughput on big (NAR bytes / median time): " + ", ".join(
            f"store {op} {nar_big_size / s.median / 1e6:.0f} MB/s, nix {nar_big_size / n.median / 1e6:.0f} MB/s"
            for op, t, s, n in rows if t == "big") + ".")
        out.append("")
    out.append("## Peak RSS (max over all runs incl. warm-up) and CPU time (user+sys, median)\n")
    out.append("| operation | tree | store MiB | nix MiB | target (store) | pass/fail | store CPU s | nix CPU s |")
    out.append("|---|---|---|---|---|---|---|---|")
    for op, t, s, n in rows:
        ok = s.peak_rss_mib < RSS_LIMIT_MIB
        failed |= not ok
        out.append(f"| {op} | {t} | {s.peak_rss_mib:.1f} | {n.peak_rss_mib:.1f} | < {RSS_LIMIT_MIB} MiB | "
                   f"{'PASS' if ok else 'FAIL'} | {s.cpu_median:.2f} | {n.cpu_median:.2f} |")
    out.append("")
    out.append("Overall: " + ("all targets met" if not failed else "SOME TARGETS FAILED"))
    print("\n".join(out), flush=True)
    rm_tree(home)
    cleanup_stores(work, stores)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
