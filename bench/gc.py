#!/usr/bin/env python3
"""Benchmark `store gc` on a 20,000-path store of which 10,000 paths are dead.

The store is made once by `examples/gc_populate.rs` (20 groups of 1,000 paths; each path
a directory with two small files and up to 4 references; 10 groups reachable from one
direct GC root each, the other 10 dead, every dead path also referring to a live one),
then copied (`cp -a`, then `sync`, untimed) to a fresh directory for every measurement.

Measures, --reps times each after one warm-up (median and min of the wall-clock time,
peak RSS through GNU time):

  store gc --dry-run      target: median < 0.5 s
  store gc                target: median < 2 s   (deletes the 10,000 dead paths)

Before timing it checks (untimed) that `gc --print-dead` lists exactly the 10,000 dead
paths, and after one real `gc` that 10,000 paths remain and `verify --all` passes.
Exit status: 0 targets met, 1 a target missed, 2 a correctness check failed.

usage: python3 bench/gc.py [--reps N] [--work DIR] [--stores-dir DIR] [--build]
                           [--store-bin PATH] [--populate-bin PATH]
See bench/README.md.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GNU_TIME = "/usr/bin/time"
GROUPS, PER_GROUP = 20, 1000
TARGETS = {"gc --dry-run": 0.5, "gc": 2.0}


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")


def build(work):
    """Builds the release binary and the populator, and copies both into WORK at once (the
    target dir may be shared with other checkouts that rebuild it)."""
    log("cargo build --release --bin store --example gc_populate")
    subprocess.run(
        ["cargo", "build", "--release", "--bin", "store", "--example", "gc_populate"],
        cwd=REPO,
        check=True,
    )
    t = target_dir()
    out = []
    for src, name in [("release/store", "store-under-test"),
                      ("release/examples/gc_populate", "gc_populate")]:
        dst = os.path.join(work, name)
        shutil.copy2(os.path.join(t, src), dst)
        out.append(dst)
    return out


def run(cmd, capture=False):
    p = subprocess.run(cmd, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return p.stdout


def run_measured(cmd):
    """(wall seconds, peak RSS KiB, stdout) of one run, through GNU time when present."""
    with tempfile.NamedTemporaryFile(mode="r") as rss_f:
        full = [GNU_TIME, "-f", "%M", "-o", rss_f.name, *cmd] if os.path.exists(GNU_TIME) else cmd
        t0 = time.perf_counter()
        p = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t1 = time.perf_counter()
        if p.returncode != 0:
            raise RuntimeError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
        lines = rss_f.read().split()
        rss = int(lines[-1]) if lines else 0
    return t1 - t0, rss, p.stdout


def fresh_copy(template, stores_dir, n):
    dst = os.path.join(stores_dir, f"store-{n}")
    if os.path.exists(dst):
        subprocess.run(["chmod", "-R", "u+w", dst], check=True)
        shutil.rmtree(dst)
    subprocess.run(["cp", "-a", template, dst], check=True)
    os.sync()  # so the collector deletes files that are on disk, as in a real store
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--work", default="/tmp/store-bench/gc")
    ap.add_argument("--stores-dir", default=None)
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--store-bin", default=None)
    ap.add_argument("--populate-bin", default=None)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    stores_dir = a.stores_dir or os.path.join(a.work, "stores")
    os.makedirs(stores_dir, exist_ok=True)
    store_bin, populate_bin = a.store_bin, a.populate_bin
    if a.build or not (store_bin and populate_bin):
        built = build(a.work)
        store_bin, populate_bin = store_bin or built[0], populate_bin or built[1]

    template = os.path.join(stores_dir, "template")
    if not os.path.exists(os.path.join(template, "done")):
        if os.path.exists(template):
            subprocess.run(["chmod", "-R", "u+w", template], check=True)
            shutil.rmtree(template)
        log(f"populating {template} ({GROUPS * PER_GROUP} paths)")
        t0 = time.perf_counter()
        run([populate_bin, template, str(GROUPS), str(PER_GROUP)])
        open(os.path.join(template, "done"), "w").close()
        log(f"populated in {time.perf_counter() - t0:.1f} s")

    def store(root, *args):
        return [store_bin, "--root", root, *args]

    # Correctness, untimed.
    root = fresh_copy(template, stores_dir, "check")
    dead = run(store(root, "gc", "--print-dead"), capture=True).split()
    expected_dead = (GROUPS - GROUPS // 2) * PER_GROUP
    if len(dead) != expected_dead or not all("-bench-1" in p for p in dead):
        print(f"MISMATCH: --print-dead listed {len(dead)} paths, expected {expected_dead}")
        return 2
    out = run(store(root, "gc"), capture=True)
    p = subprocess.run(store(root, "verify", "--all"), capture_output=True, text=True)
    verified = p.stdout + p.stderr if p.returncode == 0 else f"exit {p.returncode}: {p.stderr}"
    want = f"checked {GROUPS * PER_GROUP - expected_dead} paths: "
    if not out.startswith(f"{expected_dead} store paths deleted") or want not in verified:
        print(f"MISMATCH: gc said {out.strip()!r}, verify said {verified.strip()!r}")
        return 2
    log(f"check ok: {out.strip()}; {verified.strip()}")

    results = {k: [] for k in TARGETS}
    rss = {k: 0 for k in TARGETS}
    for rep in range(a.reps + 1):
        root = fresh_copy(template, stores_dir, rep)
        for name, args in [("gc --dry-run", ["gc", "--dry-run"]), ("gc", ["gc"])]:
            secs, kib, _ = run_measured(store(root, *args))
            tag = "warm-up" if rep == 0 else f"rep {rep}"
            log(f"{tag}: store {name}: {secs:.3f} s, {kib / 1024:.1f} MiB, "
                f"load {os.getloadavg()[0]:.2f}")
            if rep > 0:
                results[name].append(secs)
                rss[name] = max(rss[name], kib)

    for d in os.listdir(stores_dir):
        if d != "template":
            p = os.path.join(stores_dir, d)
            subprocess.run(["chmod", "-R", "u+w", p], check=True)
            shutil.rmtree(p)

    print(f"store gc on {GROUPS * PER_GROUP} paths ({expected_dead} dead), "
          f"{a.reps} reps, stores in {stores_dir}")
    print(f"machine: {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")
    print()
    print("| command | median s | min s | target s | peak RSS MiB | ok |")
    print("|---|---|---|---|---|---|")
    ok = True
    for name, target in TARGETS.items():
        med, lo = statistics.median(results[name]), min(results[name])
        good = med < target
        ok &= good
        print(f"| store {name} | {med:.3f} | {lo:.3f} | {target} | {rss[name] / 1024:.1f} | "
              f"{'yes' if good else 'NO'} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
