"""Helpers shared by the benchmark scripts (bench/cache.py, bench/build.py, bench/run.py,
bench/latency.py, bench/s3.py): running and measuring children, interleaved rounds,
starting and stopping servers (nginx), removing stores, and reading how busy the machine is."""

import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

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


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def stderr_log(tag):
    """A function printing `HH:MM:SS [tag] msg` on stderr (progress; the report goes to
    stdout)."""
    def log(msg):
        print(f"{time.strftime('%H:%M:%S')} [{tag}] {msg}", file=sys.stderr, flush=True)
    return log


class Procs:
    """The servers a benchmark started (each in its own session), stopped by PID in reverse
    order: SIGTERM, then SIGKILL after 15 s. Use it in a try/finally."""

    def __init__(self, log):
        self.log = log
        self.procs = []  # (name, Popen)

    def add(self, name, p):
        self.procs.append((name, p))
        return p

    def start(self, name, cmd, env=None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        return self.add(name, subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr,
                                               start_new_session=True))

    def stop(self, p):
        for name, q in self.procs:
            if q is p:
                self._stop(name, q)
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def _stop(self, name, p):
        if p.poll() is not None:
            return
        try:
            os.kill(p.pid, signal.SIGTERM)
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        except ProcessLookupError:
            pass
        self.log(f"stopped {name} (pid {p.pid})")

    def stop_all(self):
        for name, p in reversed(self.procs):
            self._stop(name, p)
        self.procs = []


def wait_http(url, p, what, tries=100):
    """Polls url until it answers (0.1 s apart); RuntimeError if p exits or it never does."""
    for _ in range(tries):
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited ({p.returncode})")
        try:
            http_get(url, timeout=2)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer at {url}")


def start_nginx(procs, conf_dir, root, transfer="sendfile on;\n    tcp_nopush on;", access_log=None):
    """nginx serving the static files under root on a free port of 127.0.0.1 (`daemon off`,
    private config and temp dirs in conf_dir); returns (Popen, url). With access_log, one
    line `$connection $status $body_bytes_sent $request_uri` per request goes there."""
    os.makedirs(os.path.join(conf_dir, "tmp"), exist_ok=True)
    port = free_port()
    conf = os.path.join(conf_dir, "nginx.conf")
    user = "user root;\n" if os.geteuid() == 0 else ""
    logs = (f"log_format bench '$connection $status $body_bytes_sent $request_uri';\n"
            f"    access_log {access_log} bench;") if access_log else "access_log off;"
    temps = "\n".join(f"    {k}_temp_path {conf_dir}/tmp/{k};"
                      for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    with open(conf, "w") as f:
        f.write(f"""daemon off;
{user}worker_processes auto;
pid {conf_dir}/nginx.pid;
error_log {conf_dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    {logs}
    {transfer}
    keepalive_requests 1000000;
{temps}
    default_type application/octet-stream;
    types {{ text/x-nix-narinfo narinfo; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
""")
    p = procs.start(os.path.basename(conf_dir), ["nginx", "-e", os.path.join(conf_dir, "error.log"),
                                                 "-p", conf_dir, "-c", conf])
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/nix-cache-info", p, f"nginx (see {conf_dir}/error.log)")
    return p, url


def bench_rounds(label, variants, reps, setup=None, teardown=None, check=None, warmup=1,
                 log=stderr_log("bench")):
    """variants: {name: fn(ctx) -> (cmd, env)}. `warmup` untimed rounds (the check runs on
    the first round, timed or not), then `reps` timed rounds, variants interleaved.
    setup(name, rnd) -> ctx and teardown(name, ctx, result) run untimed, result being
    (wall s, peak RSS KiB, CPU s, stdout); check(name, ctx, stdout) is the correctness check."""
    res = {name: Result() for name in variants}
    for rnd in range(reps + warmup):
        for name, mk in variants.items():
            ctx = setup(name, rnd) if setup else None
            cmd, env = mk(ctx)
            os.sync()
            measured = run_measured(cmd, env)
            t, rss, cpu, out = measured
            if rnd == 0 and check:
                check(name, ctx, out)
            if teardown:
                teardown(name, ctx, measured)
            if rnd >= warmup:
                res[name].times.append(t)
                res[name].cpu.append(cpu)
            res[name].rss_kib.append(rss)
            tag = "warm-up" if rnd < warmup else f"rep {rnd - warmup + 1}/{reps}"
            log(f"{label:<8} {name:<12} {tag:<9} {t:8.3f} s  cpu {cpu:7.2f} s  "
                f"{rss / 1024:7.1f} MiB  load {load1():.2f}")
    return res
