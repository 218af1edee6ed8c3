"""Helpers shared by the benchmark scripts (bench/cache.py, bench/build.py, bench/run.py):
running and measuring children, removing stores, and reading how busy the machine is."""

import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time

GNU_TIME = "/usr/bin/time"


class Mismatch(Exception):
    """The tools being compared did not produce the same thing."""


def run_capture(cmd, env, cwd=None, input=None):
    """Run cmd; its stdout, stripped. Raises RuntimeError (with the stderr tail) on failure."""
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                       input=input)
    if r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n"
                           f"{r.stderr.decode(errors='replace')[-4000:]}")
    return r.stdout.decode().strip()


def run_measured(cmd, env, cwd=None):
    """Run cmd; return (wall s, peak RSS KiB, CPU s user+sys of it and its children, stdout).

    Peak RSS is the child's ru_maxrss as reported by GNU time (`/usr/bin/time -f %M`, which
    takes it from wait4()). Not from our own os.wait4(): Linux carries the RSS high-water
    mark of the process that forked across exec, and Python's subprocess forks (vfork) from
    this interpreter, so every child would report at least the interpreter's ~20 MiB. For a
    shell pipeline GNU time reports the largest member."""
    with tempfile.NamedTemporaryFile(mode="r") as rss_f, tempfile.TemporaryFile() as outf, \
            tempfile.TemporaryFile() as errf:
        full = [GNU_TIME, "-f", "%M %U %S", "-o", rss_f.name, *cmd]
        t0 = time.perf_counter()
        p = subprocess.Popen(full, env=env, stdout=outf, stderr=errf, cwd=cwd)
        p.wait()
        t1 = time.perf_counter()
        errf.seek(0)
        err = errf.read().decode(errors="replace")
        if p.returncode != 0:
            raise RuntimeError(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n{err[-4000:]}")
        outf.seek(0)
        out = outf.read().decode(errors="replace")
        rss, user, sys_ = rss_f.read().splitlines()[-1].split()
    return t1 - t0, int(rss), float(user) + float(sys_), out


def rm_tree(path):
    """Remove a store, or a file (Nix and we make store paths read-only; only directories
    need to be writable to delete their entries)."""
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, _ in os.walk(path):
            os.chmod(root, 0o755)
        shutil.rmtree(path)
    else:
        os.unlink(path)


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def busy_cores(seconds=2.0):
    """CPUs busy over the next `seconds` (from /proc/stat), while we are idle."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v[:8]), idle
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    total = t1 - t0
    return (total - (i1 - i0)) / total * os.cpu_count() if total else 0.0


class Result:
    """Timings of one variant: wall seconds and CPU seconds of the timed runs, peak RSS
    (KiB) of every run, warm-up included."""

    def __init__(self, times=None, rss_kib=None, cpu=None):
        self.times = times if times is not None else []
        self.rss_kib = rss_kib if rss_kib is not None else []
        self.cpu = cpu if cpu is not None else []

    @property
    def median(self):
        return statistics.median(self.times)

    @property
    def min(self):
        return min(self.times)

    @property
    def cpu_median(self):
        return statistics.median(self.cpu)

    @property
    def peak_rss_mib(self):
        return max(self.rss_kib) / 1024.0


def snapshot_binary(store_bin, work, repo):
    """Copies the binary under test to WORK/store-under-test (building it in REPO if it is
    missing), since others may rebuild target/release/store during the run. Returns the
    copy's path and a line describing it (source, sha256 prefix, build time)."""
    if not os.path.exists(store_bin):
        print(f"{store_bin} missing: cargo build --release", flush=True)
        subprocess.run(["cargo", "build", "--release"], cwd=repo, check=True)
    snap = os.path.join(work, "store-under-test")
    shutil.copy2(store_bin, snap)
    with open(snap, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(store_bin)))
    return snap, f"{store_bin} (copied to {snap}; sha256 {digest}…, built {built})"


def commit_info(repo):
    """The short HEAD commit of REPO, marked when the work tree has uncommitted changes."""
    try:
        commit = run_capture(["git", "rev-parse", "--short", "HEAD"], None, cwd=repo)
        dirty = run_capture(["git", "status", "--porcelain", "--untracked-files=no"], None, cwd=repo)
        return commit + (" (+ uncommitted changes)" if dirty else "")
    except Exception as e:
        return f"unknown ({e})"


def where(path):
    """`PATH (FSTYPE SOURCE)`: the file system a dir is on."""
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", path],
                        stdout=subprocess.PIPE, text=True).stdout.strip()
    return f"{path} ({fs or '?'})"
