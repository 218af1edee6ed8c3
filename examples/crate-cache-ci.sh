#!/usr/bin/env bash
# The nightly crate cache, end to end, without root, on the fixture workspace
# tests/fixtures/cargo/ws-a (itoa, memchr, serde + serde_derive, bzip2-sys compiling C,
# a path binary):
#   CI:        records a build with `store cargo --record`, signs the compiled crates with
#              its key and pushes the manifest's closure to a file:// cache and to a
#              `store serve` (upload token, uploads must carry a trusted signature).
#   developer: a second checkout at another path, with another CARGO_HOME and an empty
#              store, builds from each cache, trusting only the CI's public key.
# Each build prints its `store cargo:` summary line. Needs crates.io (cargo downloads).
# Usage: examples/crate-cache-ci.sh [WORKDIR]   (default: target/crate-cache-ci)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=${1:-target/crate-cache-ci}
rm -rf "$work" && mkdir -p "$work"
work=$(cd "$work" && pwd)

if [[ -z "${STORE_BIN:-}" ]]; then
  cargo build --quiet --bin store
  STORE_BIN=$repo/target/debug/store
fi
# Keep the user's settings out: every store command below names its root and config.
unset STORE_ROOT STORE_DIR STORE_CONFIG STORE_SUBSTITUTERS STORE_TRUSTED_PUBLIC_KEYS \
  RUSTC_WRAPPER CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR
store() { "$STORE_BIN" "$@"; }

echo "== the CI's signing key and upload token"
store key generate --name crate-ci-1 \
  --secret-file "$work/crate-ci-1.sec" --public-file "$work/crate-ci-1.pub"
pub=$(cat "$work/crate-ci-1.pub")
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/upload.token"
cat > "$work/ci.toml" <<EOF
secret-key-files = ["$work/crate-ci-1.sec"]
bearer-token = "$(cat "$work/upload.token")"
EOF
echo "public key: $pub"

echo "== store serve on 127.0.0.1 (a free port), accepting uploads signed by the CI key"
"$STORE_BIN" --root "$work/serve-root" serve --listen 127.0.0.1:0 \
  --upload-token-file "$work/upload.token" --trusted-public-keys "$pub" \
  2> "$work/serve.stderr" &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true' EXIT
serve_url=
for _ in $(seq 200); do
  serve_url=$(grep -o 'listening on http://[^ ]*' "$work/serve.stderr" | head -n1 | cut -d' ' -f3 || true)
  [[ -n "$serve_url" ]] && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.stderr" >&2; exit 1; }
  sleep 0.05
done
[[ -n "$serve_url" ]] || { echo "store serve printed no address" >&2; exit 1; }
serve_url=${serve_url%/}
echo "store serve (pid $serve_pid) on $serve_url"

echo "== CI: record ws-a (checkout $work/ci/src, CARGO_HOME $work/ci/cargo-home)"
mkdir -p "$work/ci/src" && cp -r tests/fixtures/cargo/ws-a "$work/ci/src/"
manifest=$(cd "$work/ci/src/ws-a" && CARGO_HOME="$work/ci/cargo-home" \
  store --root "$work/ci/root" --config "$work/ci.toml" cargo --record \
  --push-to "file://$work/file-cache" -o "$work/ci/manifest" \
  --report "$work/ci/report.json" -- build --locked --quiet)
echo "manifest: $manifest (a GC root: $work/ci/manifest)"
head -n 4 "$work/ci/root$manifest"
echo "== CI: push the manifest's closure to store serve too"
store --root "$work/ci/root" --config "$work/ci.toml" copy --to "$serve_url" \
  --secret-key-file "$work/crate-ci-1.sec" "$manifest"
echo "file:// cache: $(ls "$work/file-cache" | grep -c narinfo) narinfos"

n=0
for cache in "$serve_url" "file://$work/file-cache"; do
  dev=$work/dev-$((++n))
  echo "== developer: another checkout ($dev/src), another CARGO_HOME, an empty store, from $cache"
  mkdir -p "$dev/src" && cp -r tests/fixtures/cargo/ws-a "$dev/src/"
  (cd "$dev/src/ws-a" && CARGO_HOME="$dev/cargo-home" \
    store --root "$dev/root" cargo --substituters "$cache" --trusted-public-keys "$pub" \
    --report "$dev/report.json" -- build --locked --quiet)
  echo "== the binaries built in both checkouts print the same"
  diff <("$work/ci/src/ws-a/target/debug/app") <("$dev/src/ws-a/target/debug/app")
  "$dev/src/ws-a/target/debug/app"
done

echo "== a second build in the last checkout is a no-op"
(cd "$dev/src/ws-a" && CARGO_HOME="$dev/cargo-home" \
  store --root "$dev/root" cargo --substituters "$cache" --trusted-public-keys "$pub" \
  -- build --locked --quiet)
echo "crate-cache-ci: done (work dir $work)"
