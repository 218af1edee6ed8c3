#!/usr/bin/env python3
"""Benchmark building derivations: `store realise` against `nix-store --realise` (Nix 2.8), on
the same machine, in the same run; plus reference-scanning throughput.

dag      A DAG of --n (default 200) trivial derivations made by nix-instantiate: derivation i
         depends on i-1 and i-2, its builder is /bin/sh -c "echo i DEP1 DEP2 > $out" (so each
         output refers to its inputs; --plain: "echo i > $out", no references). A cold build
         of the last one into a fresh store, both tools with --max-jobs 2:

           nix-store --store FRESH --realise TOP.drv --max-jobs 2 \\
               --option sandbox-paths "/bin /lib /lib64 /usr"
           store --root FRESH --store-dir /nix/store realise --max-jobs 2 \\
               --sandbox-paths "/bin /lib /lib64 /usr" TOP.drv

         Each fresh store gets the .drv closure first, untimed (Nix: `nix copy --to FRESH
         --derivation`; ours: `store copy --from file://CACHE` of a signed cache made by
         `nix copy --to file://… --derivation`). Both build in a sandbox: Nix 2.8 forces its
         own for a chroot store even with `sandbox = false`, so ours uses its namespace
         sandbox too (the same isolation: user/mount/pid/ipc/uts/network namespaces, inputs
         bind-mounted read-only, the same sandbox paths).

refscan  `target/release/examples/refscan_tree TREE`: the NAR of the `big` tree
         (bench/gen_trees.py, 1 GiB) streamed through the reference scanner
         looking for 1,000 hash parts, warm page cache; median throughput.

Before timing, the warm-up run of each tool is checked: the same printed output paths, and
for the closure of the top output the same paths, narHash, narSize and references
(`store path-info --json -r` vs `nix path-info --json -r`). Exit status 2 if not, 1 if a
target failed, 0 if all were met.

Targets: dag nix/store median ratio >= 1.5; refscan >= 1 GB/s (10^9 B/s of NAR).

usage: python3 bench/build.py [--work DIR] [--reps N] [--n N] [--plain] [--only dag|refscan]
                              [--store-bin PATH] [--trees DIR] [--wait-quiet S] [--max-load L]
See bench/README.md.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from common import (GNU_TIME, Mismatch, Result, busy_cores, load1, rm_tree, run_capture,
                    commit_info, run_measured, snapshot_binary, where)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN_TREES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen_trees.py")
KEY_DIR = os.path.join(REPO, "tests/fixtures/nix-2.8/keys")
KEY_NAME = "test-cache-1"
MIB = 1 << 20
SANDBOX_PATHS = " ".join(p for p in ["/bin", "/lib", "/lib64", "/usr"] if os.path.exists(p))

DAG_RATIO = 1.5  # nix / store
REFSCAN_GBS = 1.0  # 10^9 B/s


def log(msg):
    print(f"[build-bench] {msg}", file=sys.stderr, flush=True)


class Quiet:
    """Before each section: wait (at most `budget` s over the whole run) until other
    processes use < max_busy CPUs, sampled over 2 s while we are idle (a `cargo build`
    by someone else would skew wall-clock times)."""

    def __init__(self, max_busy, budget):
        self.max_busy = max_busy
        self.deadline = time.time() + budget
        self.notes = []

    def section(self, name):
        while True:
            b = busy_cores()
            if b < self.max_busy or time.time() >= self.deadline:
                break
            log(f"{b:.2f} CPUs busy with other work, waiting 20 s before {name} ...")
            time.sleep(20)
        self.notes.append(f"{name}: {b:.2f} CPUs busy elsewhere, load {load1():.2f}")
        if b >= self.max_busy:
            log(f"WARNING: {b:.2f} CPUs busy with other work during {name}; numbers will be noisy")
        return b


def dag_expr(n, plain):
    if plain:
        body = '"echo ${toString i} > $out"'
    else:
        body = '("echo ${toString i} " + builtins.concatStringsSep " " (map toString deps) + " > $out")'
    return f"""
let
  n = {n};
  mk = i: deps: derivation {{
    name = "bdag-${{toString i}}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" {body} ];
  }};
  ds = builtins.genList (i: mk i (
    if i == 0 then [ ]
    else if i == 1 then [ (builtins.elemAt ds 0) ]
    else [ (builtins.elemAt ds (i - 1)) (builtins.elemAt ds (i - 2)) ])) n;
in builtins.elemAt ds (n - 1)
"""


class Env:
    def __init__(self, args):
        self.work = os.path.abspath(args.work)
        if os.path.commonpath([self.work, REPO]) == REPO:
            sys.exit(f"{self.work} is inside the repository; put benchmark data elsewhere")
        os.makedirs(self.work, exist_ok=True)
        self.runs = os.path.join(self.work, "runs")
        self.master = os.path.join(self.work, "nix-master")
        self.cache = os.path.join(self.work, "drv-cache")
        with open(os.path.join(KEY_DIR, f"{KEY_NAME}.pub")) as f:
            self.pubkey = f.read().strip()
        self.seckey = os.path.join(KEY_DIR, f"{KEY_NAME}.sec")
        self.base_env = {k: v for k, v in os.environ.items()
                         if not k.startswith(("NIX_", "STORE_", "RUST_LOG", "XDG_"))}
        self.home = os.path.join(self.work, "home")
        os.makedirs(self.home, exist_ok=True)
        self.base_env.update(HOME=self.home, XDG_CACHE_HOME=os.path.join(self.home, ".cache"),
                             XDG_CONFIG_HOME=os.path.join(self.home, ".config"))
        self.nix_env = dict(self.base_env, NIX_CONFIG=(
            "build-users-group =\nsandbox = false\nexperimental-features = nix-command\n"
            f"substituters =\ntrusted-public-keys = {self.pubkey}"))
        self.counter = 0

    def snapshot_binary(self, store_bin):
        self.store_bin, self.bin_info = snapshot_binary(store_bin, self.work, REPO)

    def ours(self, root, *args):
        return [self.store_bin, "--root", root, "--store-dir", "/nix/store", *args]

    def fresh(self, tag):
        self.counter += 1
        d = os.path.join(self.runs, f"{self.counter:03d}-{tag}")
        os.makedirs(d)
        return d

    def cleanup_runs(self):
        if os.path.isdir(self.runs):
            rm_tree(self.runs)
        os.makedirs(self.runs, exist_ok=True)


def prepare_dag(env, n, plain):
    """The DAG instantiated into the master chroot store and pushed (.drv closure only) to a
    signed uncompressed file:// cache. Returns the top .drv path."""
    for d in (env.master, env.cache):
        rm_tree(d)
    expr = os.path.join(env.work, "dag.nix")
    with open(expr, "w") as f:
        f.write(dag_expr(n, plain))
    top = run_capture(["nix-instantiate", "--store", env.master, expr], env.nix_env)
    drvs = [p for p in run_capture(["nix-store", "--store", env.master, "-qR", top],
                                   env.nix_env).split() if p.endswith(".drv")]
    if len(drvs) != n:
        raise RuntimeError(f"the DAG has {len(drvs)} derivations, expected {n}")
    run_capture(["nix", "copy", "--store", env.master, "--to",
                 f"file://{env.cache}?compression=none&secret-key={env.seckey}",
                 "--derivation", top], env.nix_env)
    log(f"DAG of {n} derivations: {top}")
    return top


def closure_infos(cmd, env):
    out = run_capture(cmd, env)
    return {i["path"]: (i["narHash"], i["narSize"], tuple(sorted(i["references"])))
            for i in json.loads(out)}


def section_dag(env, top, reps, n):
    ours_cmd = lambda root: env.ours(root, "realise", "--max-jobs", "2",
                                     "--sandbox-paths", SANDBOX_PATHS, top)
    nix_cmd = lambda root: ["nix-store", "--store", root, "--realise", top, "--max-jobs", "2",
                            "--option", "sandbox-paths", SANDBOX_PATHS]

    def setup(name):
        d = env.fresh(f"dag-{name}")
        root = os.path.join(d, "root")
        if name == "store":
            run_capture(env.ours(root, "copy", "--from", f"file://{env.cache}",
                                 "--trusted-public-keys", env.pubkey, top), env.base_env)
        else:
            run_capture(["nix", "copy", "--store", env.master, "--to", root, "--derivation", top],
                        env.nix_env)
        return root

    variants = {"store": (ours_cmd, env.base_env), "nix": (nix_cmd, env.nix_env)}
    res = {k: Result() for k in variants}
    printed = {}
    for rnd in range(reps + 1):
        for name, (mk, e) in variants.items():
            root = setup(name)
            os.sync()
            t, rss, cpu, out = run_measured(mk(root), e)
            if rnd == 0:
                printed[name] = (root, sorted(out.split()))
            else:
                res[name].times.append(t)
                res[name].cpu.append(cpu)
            res[name].rss_kib.append(rss)
            tag = "warm-up" if rnd == 0 else f"rep {rnd}/{reps}"
            log(f"dag {n:<4} {name:<6} {tag:<9} {t:8.3f} s  cpu {cpu:7.2f} s  "
                f"{rss / 1024:7.1f} MiB  load {load1():.2f}")
        if rnd == 0:
            check_dag(env, printed)
    return res


def check_dag(env, printed):
    (s_root, s_out), (n_root, n_out) = printed["store"], printed["nix"]
    if s_out != n_out:
        raise Mismatch(f"printed outputs: store {s_out}, nix {n_out}")
    theirs = closure_infos(["nix", "path-info", "--json", "-r", "--store", n_root, *n_out],
                           env.nix_env)
    mine = closure_infos(env.ours(s_root, "path-info", "--json", "-r", *s_out), env.base_env)
    if mine != theirs:
        missing = sorted(set(theirs) - set(mine))[:3]
        extra = sorted(set(mine) - set(theirs))[:3]
        diff = [(p, mine[p], theirs[p]) for p in theirs if p in mine and mine[p] != theirs[p]][:3]
        raise Mismatch(f"closure of the top output: missing {missing}, extra {extra}, "
                       f"different (store, nix) {diff}")
    log(f"  outputs checked: {len(theirs)} paths with the same narHash, narSize, references")


def section_refscan(env, args):
    exe = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")),
                       "release/examples/refscan_tree")
    if args.build or not os.path.exists(exe):
        log("cargo build --release --example refscan_tree")
        subprocess.run(["cargo", "build", "--release", "--example", "refscan_tree"], cwd=REPO,
                       check=True)
    big = os.path.join(os.path.abspath(args.trees), "big")
    if not all(os.path.exists(os.path.join(big, f"blob{i}.bin")) for i in range(8)):
        log(f"generating trees in {args.trees} with {GEN_TREES} ...")
        subprocess.run([sys.executable, GEN_TREES, args.trees], check=True,
                       stdout=subprocess.DEVNULL)
    out = run_capture([exe, big, "--reps", str(args.reps), "--candidates", "1000"], env.base_env)
    runs = [json.loads(l) for l in out.splitlines()]
    for r in runs:
        log(f"refscan {r['kind']:<5} {r['nar_bytes'] / r['secs'] / 1e9:6.2f} GB/s ({r['secs']:.3f} s)")
    size = runs[0]["nar_bytes"]
    scan = statistics.median(r["secs"] for r in runs if r["kind"] == "scan")
    dump = statistics.median(r["secs"] for r in runs if r["kind"] == "dump")
    return size, scan, dump


def machine_info(env):
    info = {"nproc": run_capture(["nproc"], None)}
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info["cpu"] = model
    with open("/proc/meminfo") as f:
        info["mem"] = f"{int(f.readline().split()[1]) / MIB:.1f} GiB"
    info["kernel"] = platform.release()
    info["nix"] = run_capture(["nix", "--version"], env.nix_env)
    info["store commit"] = commit_info(REPO)
    info["store binary"] = env.bin_info
    info["work dir"] = where(env.work)
    info["sandbox paths"] = SANDBOX_PATHS
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/store-bench/build")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (after one warm-up)")
    ap.add_argument("--n", type=int, default=200, help="derivations in the DAG")
    ap.add_argument("--plain", action="store_true",
                    help="builders write only their number (outputs without references)")
    ap.add_argument("--only", choices=["dag", "refscan"])
    ap.add_argument("--store-bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release/store"))
    ap.add_argument("--build", action="store_true",
                    help="cargo build --release (binary and refscan example) first")
    ap.add_argument("--trees", default="/tmp/store-bench/trees")
    ap.add_argument("--wait-quiet", type=float, default=600, metavar="SECONDS",
                    help="wait up to this long in all for other work to stop (default 600)")
    ap.add_argument("--max-busy", type=float, default=0.5,
                    help="CPUs other processes may use when a section starts (default 0.5)")
    args = ap.parse_args()
    if args.reps < 1 or args.n < 2:
        ap.error("--reps must be >= 1 and --n >= 2")
    for tool in ("nix", "nix-store", "nix-instantiate", GNU_TIME):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed")
    if args.build:
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)

    env = Env(args)
    env.snapshot_binary(os.path.abspath(args.store_bin))
    env.cleanup_runs()
    quiet = Quiet(args.max_busy, args.wait_quiet)
    info = machine_info(env)
    sections = [args.only] if args.only else ["dag", "refscan"]
    rows, failed = [], False
    t_start = time.time()
    try:
        if "dag" in sections:
            top = prepare_dag(env, args.n, args.plain)
            quiet.section("dag")
            res = section_dag(env, top, args.reps, args.n)
            s, n = res["store"], res["nix"]
            ratio = n.median / s.median
            ok = ratio >= DAG_RATIO
            failed |= not ok
            rows.append(f"| cold build, DAG of {args.n} derivations{' (plain)' if args.plain else ''}, "
                        f"--max-jobs 2 | {s.median:.3f} ({s.min:.3f}) | {n.median:.3f} ({n.min:.3f}) | "
                        f"{ratio:.2f} ({n.min / s.min:.2f}) | nix/store ≥ {DAG_RATIO} | "
                        f"{'PASS' if ok else 'FAIL'} |")
            dag_extra = (s, n)
        if "refscan" in sections:
            quiet.section("refscan")
            size, scan, dump = section_refscan(env, args)
            gbs = size / scan / 1e9
            ok = gbs >= REFSCAN_GBS
            failed |= not ok
            rows.append(f"| refscan: NAR of big ({size / MIB:.0f} MiB) through RefScanSink, "
                        f"1,000 candidates | {scan:.3f} = {gbs:.2f} GB/s "
                        f"({size / scan / (1 << 30):.2f} GiB/s); NAR dump alone {dump:.3f} s = "
                        f"{size / dump / 1e9:.2f} GB/s | — | — | ≥ {REFSCAN_GBS} GB/s | "
                        f"{'PASS' if ok else 'FAIL'} |")
    except Mismatch as e:
        print(f"\n**MISMATCH — comparison is not apples to apples: {e}**", flush=True)
        sys.exit(2)
    elapsed = time.time() - t_start

    out = ["## Machine\n"]
    for k, v in info.items():
        out.append(f"- {k}: {v}")
    out.append("- other work per section (CPUs busy elsewhere, sampled 2 s before it): "
               + "; ".join(quiet.notes))
    out.append(f"- reps: {args.reps} timed (+1 warm-up), store/nix runs interleaved, each into a "
               f"fresh store, `sync` before every run; wall time {elapsed:.0f} s")
    out.append("")
    out.append("## Results\n")
    out.append("| operation | store median s (min) | nix median s (min) | ratio nix/store (of mins) | target | pass/fail |")
    out.append("|---|---|---|---|---|---|")
    out.extend(rows)
    out.append("")
    if "dag" in sections:
        s, n = dag_extra
        out.append(f"CPU time (user+sys of the command and its children, median): store "
                   f"{s.cpu_median:.2f} s, nix {n.cpu_median:.2f} s. Peak RSS (largest single "
                   f"process): store {s.peak_rss_mib:.1f} MiB, nix {n.peak_rss_mib:.1f} MiB.")
        out.append("")
        out.append(f"`nix` = `nix-store --store FRESH --realise TOP.drv --max-jobs 2 --option "
                   f"sandbox-paths '{SANDBOX_PATHS}'` (Nix's sandbox, forced for a chroot store); "
                   f"`store` = `store --root FRESH --store-dir /nix/store realise --max-jobs 2 "
                   f"--sandbox-paths '{SANDBOX_PATHS}' TOP.drv` (our namespace sandbox).")
        out.append("")
    out.append("Overall: " + ("all targets met" if not failed else "SOME TARGETS FAILED"))
    print("\n".join(out), flush=True)
    env.cleanup_runs()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
