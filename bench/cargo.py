#!/usr/bin/env python3
"""Benchmark `store cargo` (the compiled-crate cache) against plain cargo and sccache, on
the same machine, in the same run. See bench/CARGO.md.

Subjects:
  ripgrep  `cargo install --locked ripgrep@VERSION --root DIR` (every crate from the registry)
  self     this repository's `cargo build --release --locked` (a `git archive` of HEAD)

Configurations (each timed run starts from an empty target dir, CARGO_INCREMENTAL=0,
offline once the cargo homes hold the crates):
  cold              plain cargo, checkout A, CARGO_HOME A
  sccache-fill      sccache with an empty cache dir (fills it; reported, not a target)
  sccache-same      sccache warm, same checkout and CARGO_HOME
  sccache-other     sccache warm, checkout B and CARGO_HOME B
  record            `store cargo --record` into a fresh store, checkout A (cold)
  store-local       `store cargo`, units valid in the local store, checkout A
  store-serve       `store cargo` into a fresh store, substituting from `store serve`
                    over HTTP (127.0.0.1), checkout B and CARGO_HOME B

usage: python3 bench/cargo.py [--subjects ripgrep,self] [--reps N] [--work DIR]
                              [--store-bin PATH] [--sccache PATH]
Exit status 1 if a target of issue 14 §5 failed, 0 otherwise.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = os.path.join(REPO, "tests/fixtures/nix-2.8/keys")
RIPGREP = "15.2.0"


def log(msg):
    print(f"[cargo-bench] {msg}", file=sys.stderr, flush=True)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd, env, cwd=None, timed=True, check=True):
    """Runs cmd; returns (wall s, cpu s, stdout, stderr)."""
    cpu0, t0 = children_cpu(), time.monotonic()
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
    if check and p.returncode != 0:
        log(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
        raise SystemExit(2)
    return wall, cpu, p.stdout, p.stderr


class Bench:
    def __init__(self, args):
        self.a = args
        self.work = os.path.abspath(args.work)
        self.store = os.path.abspath(args.store_bin)
        self.sccache = args.sccache
        with open(os.path.join(KEYS, "test-cache-1.pub")) as f:
            self.pubkey = f.read().strip()
        self.config = os.path.join(self.work, "store-config.toml")
        self.serve = None
        self.results = {}  # (subject, config) -> list of (wall, cpu)
        self.reports = {}  # (subject, config) -> last report dict
        self.runs = 0

    # environment ------------------------------------------------------------
    def env(self, home, extra=None):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("STORE_", "SCCACHE_", "RUSTC_WRAPPER", "CARGO_TARGET_DIR",
                                  "CARGO_HOME", "CARGO_INCREMENTAL"))}
        e.update({"CARGO_HOME": home, "CARGO_INCREMENTAL": "0", "CARGO_NET_OFFLINE": "true",
                  "CARGO_TERM_COLOR": "never"})
        # keep rustup's toolchain reachable from another CARGO_HOME
        e.setdefault("RUSTUP_HOME", os.path.expanduser("~/.rustup"))
        e["PATH"] = os.path.expanduser("~/.cargo/bin") + ":" + e.get("PATH", "")
        e.update(extra or {})
        return e

    def setup(self):
        os.makedirs(self.work, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(f'secret-key-files = "{os.path.join(KEYS, "test-cache-1.sec")}"\n')
        for h in ("home-a", "home-b"):
            os.makedirs(os.path.join(self.work, h), exist_ok=True)

    def fresh(self, name):
        d = os.path.join(self.work, "runs", f"{self.runs:03d}-{name}")
        self.runs += 1
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    # subjects ---------------------------------------------------------------
    def prepare(self, subject):
        """Fills both cargo homes (untimed) and returns the two checkout dirs."""
        ha, hb = (os.path.join(self.work, h) for h in ("home-a", "home-b"))
        ca, cb = (os.path.join(self.work, subject, c) for c in ("checkout-a", "checkout-b-elsewhere"))
        if subject == "self":
            for c in (ca, cb):
                if not os.path.isdir(c):
                    os.makedirs(c)
                    subprocess.run(f"git -C {REPO} archive HEAD | tar -x -C {c}", shell=True, check=True)
            for c, h in ((ca, ha), (cb, hb)):
                e = self.env(h)
                e.pop("CARGO_NET_OFFLINE")
                run(["cargo", "fetch", "--locked"], e, cwd=c)
        else:
            for c in (ca, cb):
                os.makedirs(c, exist_ok=True)
            e = self.env(ha)
            e.pop("CARGO_NET_OFFLINE")
            # downloads the crates (untimed); compiles once, which also warms the disk
            if not os.path.exists(os.path.join(ha, "fetched-ripgrep")):
                d = self.fresh("fetch")
                run(["cargo", "install", "--locked", f"ripgrep@{RIPGREP}", "--root", d,
                     "--target-dir", os.path.join(d, "target")], e)
                open(os.path.join(ha, "fetched-ripgrep"), "w").close()
                shutil.rmtree(d, ignore_errors=True)
            # home B gets the same index and downloaded crates (not the unpacked sources)
            for sub in ("registry/index", "registry/cache"):
                shutil.copytree(os.path.join(ha, sub), os.path.join(hb, sub), dirs_exist_ok=True)
        return ca, cb

    def cargo_cmd(self, subject, run_dir, target):
        if subject == "self":
            return ["build", "--release", "--locked", "--target-dir", target]
        return ["install", "--locked", f"ripgrep@{RIPGREP}", "--root", os.path.join(run_dir, "inst"),
                "--target-dir", target]

    # one configuration -----------------------------------------------------
    def once(self, subject, config, checkout, home, root=None, subst=None, record=False):
        d = self.fresh(f"{subject}-{config}")
        # One target dir per checkout, emptied before each run: "same paths" are the same.
        target = os.path.join(checkout, "target")
        shutil.rmtree(target, ignore_errors=True)
        extra = {}
        cargo_args = self.cargo_cmd(subject, d, target)
        report = os.path.join(d, "report.json")
        if config.startswith("sccache"):
            extra.update({"RUSTC_WRAPPER": self.sccache, "SCCACHE_DIR": os.path.join(self.work, f"sccache-{subject}"),
                          "SCCACHE_CACHE_SIZE": "50G", "SCCACHE_IDLE_TIMEOUT": "0"})
            cmd = ["cargo", *cargo_args]
        elif root is not None:
            extra["STORE_CONFIG"] = self.config
            cmd = [self.store, "--root", root, "cargo", "--report", report]
            if record:
                cmd.append("--record")
            if subst:
                cmd += ["--substituters", subst, "--trusted-public-keys", self.pubkey]
            cmd += ["--", *cargo_args]
        else:
            cmd = ["cargo", *cargo_args]
        subprocess.run(["sync"])
        wall, cpu, _, err = run(cmd, self.env(home, extra), cwd=checkout)
        self.results.setdefault((subject, config), []).append((wall, cpu))
        if os.path.exists(report):
            with open(report) as f:
                self.reports[(subject, config)] = json.load(f)
        summary = next((l for l in err.splitlines() if l.startswith("store cargo:")), "")
        log(f"{subject:8} {config:14} {wall:8.1f} s  cpu {cpu:7.1f} s  {summary[12:]}")
        shutil.rmtree(target, ignore_errors=True)
        return d

    def start_serve(self, root):
        log_path = os.path.join(self.work, "serve.stderr")
        f = open(log_path, "w")
        p = subprocess.Popen([self.store, "--root", root, "serve", "--listen", "127.0.0.1:0"],
                             stderr=f, stdout=subprocess.DEVNULL)
        for _ in range(200):
            time.sleep(0.05)
            m = re.search(r"http://127\.0\.0\.1:\d+", open(log_path).read())
            if m:
                self.serve = p
                return m.group(0)
        p.kill()
        raise SystemExit("store serve did not start")

    def stop_serve(self):
        if self.serve:
            self.serve.send_signal(signal.SIGTERM)
            self.serve.wait(timeout=10)
            self.serve = None

    def stop_sccache(self):
        """Stops the sccache server (it keeps its SCCACHE_DIR from its start)."""
        subprocess.run([self.sccache, "--stop-server"], capture_output=True)

    def subject(self, subject):
        ca, cb = self.prepare(subject)
        ha, hb = (os.path.join(self.work, h) for h in ("home-a", "home-b"))
        self.stop_sccache()
        shutil.rmtree(os.path.join(self.work, f"sccache-{subject}"), ignore_errors=True)
        self.once(subject, "sccache-fill", ca, ha)
        # What checkout A left in sccache's cache; restored before each run at another path,
        # which would otherwise add that path's entries and find them in the next rep.
        cache_dir = os.path.join(self.work, f"sccache-{subject}")
        snapshot = cache_dir + "-after-fill"
        self.stop_sccache()
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(cache_dir, snapshot)
        root = None
        reps = self.a.self_reps if subject == "self" else self.a.reps
        for rep in range(reps):
            self.once(subject, "cold", ca, ha)
            root = os.path.join(self.fresh(f"{subject}-root"), "root")
            self.once(subject, "record", ca, ha, root=root, record=True)
        url = self.start_serve(root)
        try:
            # Untimed: fills the server's NAR cache (it compresses each NAR when first asked),
            # as a cache in use would have it.
            self.once(subject, "serve-warm-up", cb, hb,
                      root=os.path.join(self.fresh(f"{subject}-root-w"), "root"), subst=url)
            for rep in range(reps):
                self.once(subject, "sccache-same", ca, ha)
                self.stop_sccache()
                shutil.rmtree(cache_dir, ignore_errors=True)
                shutil.copytree(snapshot, cache_dir)
                self.once(subject, "sccache-other", cb, hb)
                self.once(subject, "store-local", ca, ha, root=root)
                fresh_root = os.path.join(self.fresh(f"{subject}-root-b"), "root")
                self.once(subject, "store-serve", cb, hb, root=fresh_root, subst=url)
        finally:
            self.stop_serve()
            self.stop_sccache()

    # results ----------------------------------------------------------------
    def med(self, subject, config, i=0):
        v = [r[i] for r in self.results.get((subject, config), [])]
        return statistics.median(v) if v else float("nan")

    def table(self):
        out, failed = [], False
        configs = ["cold", "sccache-fill", "sccache-same", "sccache-other", "record", "store-local", "store-serve"]
        for s in self.a.subjects:
            cold = self.med(s, "cold")
            out.append(f"\n### {s}\n")
            out.append("| configuration | wall median s | CPU s | × cold | runs |")
            out.append("|---|---|---|---|---|")
            for c in configs:
                n = len(self.results.get((s, c), []))
                if n:
                    out.append(f"| {c} | {self.med(s, c):.1f} | {self.med(s, c, 1):.1f} | "
                               f"{self.med(s, c) / cold:.2f} | {n} |")
            rec = self.reports.get((s, "record"), {})
            ents = rec.get("entries", [])
            registry = [e for e in ents if e["source_kind"] != "local"]
            cacheable = [e for e in registry if e["outcome"] != "uncacheable"]
            secs = lambda es: sum(e["seconds"] for e in es)
            cov_n = len(cacheable) / max(1, len(registry))
            cov_s = secs(cacheable) / max(1e-9, secs(registry))
            serve = self.reports.get((s, "store-serve"), {})
            t = serve.get("totals", {})
            hit = t.get("substituted", 0) / max(1, len(cacheable))
            over = [e["overhead_ms"] for e in serve.get("entries", []) if e["outcome"] == "substituted"]
            p50 = statistics.median(over) if over else float("nan")
            reasons = {}
            for e in registry:
                if e["outcome"] == "uncacheable":
                    reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
            warm_target = 0.2 if s == "ripgrep" else 0.5
            checks = [
                ("coverage by count ≥ 0.90", cov_n, cov_n >= 0.90),
                ("coverage by cold compile seconds ≥ 0.85", cov_s, cov_s >= 0.85),
                ("substituted at another path/CARGO_HOME ≥ 0.99", hit, hit >= 0.99),
                (f"store-serve ≤ {warm_target} × cold", self.med(s, "store-serve") / cold,
                 self.med(s, "store-serve") / cold <= warm_target),
                ("store-serve < sccache-same", self.med(s, "store-serve") / self.med(s, "sccache-same"),
                 self.med(s, "store-serve") < self.med(s, "sccache-same")),
                # Same checkout and local store as sccache-same: path crates can be local units.
                (f"store-local ≤ {warm_target} × cold", self.med(s, "store-local") / cold,
                 self.med(s, "store-local") / cold <= warm_target),
                ("store-local < sccache-same", self.med(s, "store-local") / self.med(s, "sccache-same"),
                 self.med(s, "store-local") < self.med(s, "sccache-same")),
                ("record ≤ 1.10 × cold", self.med(s, "record") / cold, self.med(s, "record") / cold <= 1.10),
                ("overhead per substituted unit p50 ≤ 20 ms", p50, p50 <= 20),
            ]
            out.append("")
            out.append(f"registry units {len(registry)}, cacheable {len(cacheable)}; "
                       f"not cacheable: {reasons or 'none'}")
            out.append("")
            out.append("| target | value | pass/fail |")
            out.append("|---|---|---|")
            for name, v, ok in checks:
                failed |= not ok
                out.append(f"| {name} | {v:.3f} | {'PASS' if ok else 'FAIL'} |")
        return "\n".join(out), failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", default="ripgrep,self")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--self-reps", type=int, default=1,
                    help="repetitions for `self` (a cold release build takes minutes)")
    ap.add_argument("--work", default="/tmp/store-bench/cargo")
    ap.add_argument("--store-bin", default=os.path.join(REPO, "target/release/store"))
    ap.add_argument("--sccache", default=shutil.which("sccache") or "sccache",
                    help="the sccache binary (not a pyenv shim: its start-up would count against sccache)")
    a = ap.parse_args()
    a.subjects = [s for s in a.subjects.split(",") if s]
    b = Bench(a)
    b.setup()
    t0 = time.monotonic()
    try:
        for s in a.subjects:
            b.subject(s)
    finally:
        b.stop_serve()
    text, failed = b.table()
    print(f"# store cargo benchmark ({time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {time.monotonic() - t0:.0f} s)")
    print(f"\nstore: {a.store_bin}; sccache: {a.sccache}; ripgrep {RIPGREP}; "
          f"reps {a.reps} (self: {a.self_reps})")
    print(text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
