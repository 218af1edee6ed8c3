"""What bench/latency.py and bench/s3.py share: the paths of bench/cache.py (its Nix chroot
store and Nix-written cache, made there if missing), our own store holding them, and a
`file://` cache that `store copy --to` wrote with the binary under test."""

import argparse
import hashlib
import json
import os
import sys
import time

import cache
from common import Mismatch, Procs, load1, rm_tree, run_capture

DEFAULT_NIX_WORK = "/tmp/store-bench/cache"  # bench/cache.py's --work
DEFAULT_DATA = "/tmp/store-bench/net"
# default work dirs of the scripts that remove many-file stores (see cache.Env.settle)
WORK_DIRS = ["/tmp/store-bench/cache", "/tmp/store-bench/latency", "/tmp/store-bench/s3"]


def add_common_args(ap, work):
    """The options both scripts take."""
    ap.add_argument("--work", default=work, help=f"everything this benchmark makes (default {work})")
    ap.add_argument("--data", default=DEFAULT_DATA,
                    help="our store and the cache `store copy --to` wrote, shared by latency.py "
                         f"and s3.py (default {DEFAULT_DATA})")
    ap.add_argument("--nix-work", default=DEFAULT_NIX_WORK,
                    help="bench/cache.py's work dir: its Nix chroot store and Nix-written cache "
                         f"(prepared there if missing; default {DEFAULT_NIX_WORK})")
    ap.add_argument("--trees", default=cache.DEFAULT_TREES, help="where big/ and src/ are (made if missing)")
    ap.add_argument("--stores-dir", metavar="DIR", help="fresh stores in DIR instead of WORK/runs")
    ap.add_argument("--store-bin", default=os.path.join(cache.REPO, "target/release/store"),
                    help="our binary (copied to WORK/store-under-test first)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (default 3)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed rounds first (default 1; with 0 the first timed round is checked)")
    ap.add_argument("--wait-quiet", type=float, default=300, metavar="SECONDS",
                    help="wait up to this long at the start for the 1-min load average to drop "
                         "below --max-load (default 300)")
    ap.add_argument("--max-load", type=float, default=1.0)


def make_envs(args, log):
    """(env, paths): a bench/cache.py Env whose work dir is ours, with the Nix chroot store
    and paths of bench/cache.py's work dir, and the binary under test snapshotted."""
    nix = cache.Env(argparse.Namespace(work=args.nix_work, trees=args.trees, stores_dir=None))
    nix.ensure_trees(cache.GEN_TREES)
    nix.prepare_paths()
    env = cache.Env(argparse.Namespace(work=args.work, trees=args.trees, stores_dir=args.stores_dir))
    env.chroot = nix.chroot
    env.paths = nix.paths
    env.nix_cache = nix.cache
    env.snapshot_binary(os.path.abspath(args.store_bin))
    log(f"binary under test: {env.bin_info}")
    return env


def tops_of(env, keys):
    return [env.paths["chain_top"] if k == "chain" else env.paths[k] for k in keys]


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_files(root):
    """Every file under root, as paths relative to it."""
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


def write_store_cache(env, data, keys, log):
    """DATA/store-cache: a signed zstd `file://` cache written by `store copy --to` with the
    binary under test (so with whatever extra objects it writes, such as closure indexes),
    holding the closures of `keys` (chain, src, big), one `store copy` per key. Our store
    DATA/ours-store is filled from bench/cache.py's Nix-written cache first. Rewritten from
    scratch when another binary wrote it. Sets env.cache (what env.start_nginx serves),
    env.ours_root and env.cache_files ({key: the files its copy wrote, nix-cache-info
    included})."""
    os.makedirs(data, exist_ok=True)
    root = os.path.join(data, "ours-store")
    out = os.path.join(data, "store-cache")
    marker = os.path.join(data, "store-cache.json")
    digest = file_sha256(env.store_bin)
    done = {}
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
    if done.get("binary") != digest:
        log(f"(re)writing {out} with the binary under test ...")
        rm_tree(out)
        done = {"binary": digest, "files": {}}
    for key in [k for k in keys if k not in done["files"]]:
        log(f"store realise {key} into {root} from the Nix-written cache (no-op if done) ...")
        run_capture(env.ours(root, "realise", "--substituters", f"file://{env.nix_cache}",
                             "--trusted-public-keys", env.pubkey, *tops_of(env, [key])), env.nix_env())
        log(f"store copy --to file://{out} {key} ...")
        before = list_files(out) if os.path.isdir(out) else set()
        run_capture(env.ours(root, "copy", "--to", f"file://{out}", "--secret-key-file", env.seckey,
                             *tops_of(env, [key])), env.nix_env())
        done["files"][key] = sorted((list_files(out) - before) | {"nix-cache-info"})
        with open(marker, "w") as f:
            json.dump(done, f)
    env.cache = out
    env.ours_root = root
    env.cache_files = done["files"]
    return tops_of(env, keys)


def help_has(env, sub, flag):
    """Whether `store SUB --help` lists flag (features that only newer binaries have)."""
    return flag in run_capture([env.store_bin, *sub.split(), "--help"], None)


def fail_usage(msg):
    sys.exit(f"error: {msg}")


def run(args, log, keys, settle, measure, report):
    """The frame of a run: snapshot the binary, write the data for `keys`, clean old fresh
    stores, wait for ext4 if `settle`, then measure(env, procs, info, notes) -> results,
    stopping every process in procs whatever happens; prints report(results, info, notes)
    -> (markdown, all targets met). Exit status 0 met, 1 not, 2 a correctness check failed."""
    env = make_envs(args, log)
    procs = Procs(log)
    env.procs = procs
    t0 = time.time()
    try:
        try:
            write_store_cache(env, args.data, keys, log)
            env.cleanup_runs()
            if settle:
                env.settle(WORK_DIRS)
            info = cache.machine_info(env)
            notes = [f"- reps: {args.reps} timed (+{args.warmup} warm-up), variants interleaved, "
                     "`sync` before every run"]
            results = measure(env, procs, info, notes)
        except Mismatch as e:
            print(f"\n**MISMATCH — comparison is not apples to apples: {e}**", flush=True)
            sys.exit(2)
    finally:
        procs.stop_all()
    notes.append(f"- wall time {time.time() - t0:.0f} s; load average at the end {load1():.2f}")
    text, ok = report(results, info, notes)
    print(text, flush=True)
    env.cleanup_runs()
    sys.exit(0 if ok else 1)
