#!/usr/bin/env python3
"""Makes the two benchmark trees, deterministically (same bytes on every run and machine).

usage: gen_trees.py OUTDIR

  OUTDIR/big/  8 files of 128 MiB each: the even ones random bytes (incompressible), the
               odd ones space-separated words from a small vocabulary (compress well).
               NAR about 1 GiB: large-file throughput (hashing, compression, copying).
  OUTDIR/src/  50,000 small files in 50 x 20 directories (pkgNN/modNN/fileNN.rs), sizes
               drawn from an exponential distribution with a mean of about 1.6 KiB, hex
               text; the first file of each directory is executable and each directory
               has one relative symlink. NAR about 86 MiB: per-file overhead.

Trees that are complete already are kept (big: by file size; src: by a `.done` marker), so
the benchmarks can call this before every run.
"""
import os
import random
import sys

MIB = 1 << 20
BIG_FILES = 8
BIG_FILE_MIB = 128
WORDS = [b"store", b"path", b"hash", b"nar", b"fn", b"impl", b"pub", b"let", b"mut", b"self"]
SRC_PACKAGES = 50
SRC_MODULES = 20
SRC_FILES = 50
SRC_MEAN_SIZE = 1600


def text_mib(rng):
    """One MiB of words separated by spaces, padded with newlines."""
    parts = []
    size = 0
    while size < MIB:
        word = WORDS[rng.randrange(len(WORDS))]
        parts.append(word)
        size += len(word) + 1
    data = b" ".join(parts)[:MIB]
    return data + b"\n" * (MIB - len(data))


def make_big(root, seed):
    """Each file from its own generator, so skipping a complete one changes no other."""
    os.makedirs(root, exist_ok=True)
    for i in range(BIG_FILES):
        path = os.path.join(root, f"blob{i}.bin")
        if os.path.exists(path) and os.path.getsize(path) == BIG_FILE_MIB * MIB:
            continue
        rng = random.Random(seed * 100 + i)
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            for _ in range(BIG_FILE_MIB):
                f.write(rng.randbytes(MIB) if i % 2 == 0 else text_mib(rng))
        os.replace(tmp, path)


def make_src(root, rng):
    done = os.path.join(root, ".done")
    if os.path.exists(done):
        return
    for p in range(SRC_PACKAGES):
        for m in range(SRC_MODULES):
            d = os.path.join(root, f"pkg{p:02d}", f"mod{m:02d}")
            os.makedirs(d, exist_ok=True)
            for n in range(SRC_FILES):
                size = 1 + int(rng.expovariate(1 / SRC_MEAN_SIZE))
                path = os.path.join(d, f"file{n:02d}.rs")
                with open(path, "wb") as f:
                    f.write(rng.randbytes((size + 1) // 2).hex().encode()[:size])
                os.chmod(path, 0o755 if n == 0 else 0o644)
            link = os.path.join(d, "link")
            if not os.path.islink(link):
                os.symlink("file01.rs", link)
    open(done, "w").close()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    make_big(os.path.join(out, "big"), 20261207)
    make_src(os.path.join(out, "src"), random.Random(1600))
    print("ok")


if __name__ == "__main__":
    main()
