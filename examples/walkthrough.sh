#!/usr/bin/env bash
# The main job, end to end, without root: build `store`, create a store under a local root,
# add a tree, show its metadata as JSON, make a signing key, sign the path, verify it, push
# it to a file:// binary cache and substitute it into a second store (verified), build a
# recipe in the sandbox (result link, build log), see what `gc --dry-run` would delete, and
# record a small cargo build with `store cargo`, push it and build it elsewhere from the cache.
# Usage: examples/walkthrough.sh [WORKDIR]   (default: target/walkthrough)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/walkthrough}
rm -rf "$work" && mkdir -p "$work"
work=$(cd "$work" && pwd)

cargo build --release --quiet
store() { ./target/release/store --root "$work/root" "$@"; }

echo "== init a store under $work/root (logical store dir /ix/store)"
store init

echo "== add a small tree"
mkdir -p "$work/hello/bin"
printf 'hello, store\n' > "$work/hello/README"
printf '#!/bin/sh\necho hello\n' > "$work/hello/bin/hello"
chmod +x "$work/hello/bin/hello"
ln -s bin/hello "$work/hello/run"
path=$(store add "$work/hello")
echo "$path"

echo "== its metadata, as JSON (the shape of nix path-info --json)"
store path-info --json "$path"

echo "== a signing key (secret file mode 0600; a throwaway key for this walkthrough)"
store key generate --name walkthrough-1 \
  --secret-file "$work/walkthrough-1.sec" --public-file "$work/walkthrough-1.pub"
echo "public key: $(cat "$work/walkthrough-1.pub")"

echo "== sign it, and see the signature recorded"
store sign --secret-file "$work/walkthrough-1.sec" "$path"
store path-info --json "$path"

echo "== verify the contents against the recorded NAR hash"
store verify "$path"

echo "== the tree in the store is read-only, with mtime 1"
ls -la "$work/root$path"

echo "== push the signed closure to a binary cache in a directory (zstd, Nix's layout)"
store copy --to "file://$work/cache" "$path"
ls "$work/cache" "$work/cache/nar"

echo "== a second store substitutes it, trusting only our key"
./target/release/store --root "$work/root2" realise --json \
  --substituters "file://$work/cache" \
  --trusted-public-keys "$(cat "$work/walkthrough-1.pub")" "$path"
./target/release/store --root "$work/root2" verify --all

echo "== without the key, it is refused before anything is downloaded"
if ./target/release/store --root "$work/root3" realise \
  --substituters "file://$work/cache" --trusted-public-keys "" "$path"; then
  echo "unexpected: an untrusted path was accepted" >&2
  exit 1
fi
echo "== build from a recipe (examples/recipes): a DAG of derivations, built in the sandbox,"
echo "   signed with our key (secret-key-files in a config file), logged, rooted by a link"
cat > "$work/build.toml" <<EOF
secret-key-files = ["$work/walkthrough-1.sec"]
sandbox-paths = ["/bin", "/lib", "/lib64", "/usr"]
EOF
if out=$(store --config "$work/build.toml" realise -o "$work/result" examples/recipes/hello.toml 2>&1); then
  echo "$out"
  # (the script names its input by its logical /ix/store path, which only exists where the
  # store is really at /ix/store, so show it rather than run it)
  cat "$work/result/bin/hello"
  store path-info --json -r "$work/result"
  store log "$work/result"
  echo "== build it again: nothing to do (the outputs are valid)"
  store --config "$work/build.toml" realise examples/recipes/hello.toml
  echo "== garbage collection keeps what the result link roots"
  store gc --dry-run
else
  case "$out" in
    *"cannot build"*"in the sandbox"*)
      echo "SKIPPED the build step: no Linux namespaces here:" >&2
      echo "$out" >&2 ;;
    *) echo "$out" >&2; exit 1 ;;
  esac
fi
echo "== the crate cache: a small crate built by 'store cargo --record' (CI), pushed, then"
echo "   built at another path with another CARGO_HOME from the cache, trusting our key"
bin=$(pwd)/target/release/store
crate_a="$work/crate-ci/checkout" crate_b="$work/crate-dev/elsewhere/checkout"
mkdir -p "$crate_a/src"
printf '%s\n' '[package]' 'name = "walkthrough-crate"' 'version = "0.1.0"' 'edition = "2021"' '' \
  '[dependencies]' 'itoa = "=1.0.15"' 'memchr = { version = "=2.7.4", default-features = false }' \
  > "$crate_a/Cargo.toml"
printf '%s\n' 'fn main() {' '    let n = memchr::memchr(b'"'"'x'"'"', b"abcx").unwrap();' \
  '    println!("found at {}", itoa::Buffer::new().format(n));' '}' > "$crate_a/src/main.rs"
mkdir -p "$(dirname "$crate_b")" && cp -r "$crate_a" "$crate_b"
if CARGO_HOME="$work/crate-ci/cargo-home" cargo fetch -q --manifest-path "$crate_a/Cargo.toml"; then
  (cd "$crate_a" && CARGO_HOME="$work/crate-ci/cargo-home" "$bin" --root "$work/root" \
    --config "$work/build.toml" cargo --record --push-to "file://$work/crate-cache" -- build -q)
  (cd "$crate_b" && CARGO_HOME="$work/crate-dev/cargo-home" "$bin" --root "$work/root2" \
    cargo --substituters "file://$work/crate-cache" \
    --trusted-public-keys "$(cat "$work/walkthrough-1.pub")" -- run -q)
else
  echo "SKIPPED the crate cache step: crates.io is not reachable" >&2
fi
echo "walkthrough complete"
