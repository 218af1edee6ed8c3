#!/usr/bin/env bash
# s3:// against Garage, the S3 engine users deploy (s3s-fs covers the same in `cargo test`):
# a throwaway single-node Garage on loopback with one bucket (also served by Garage's
# website endpoint), then
#   1. eight `store copy --to s3://` processes push overlapping closures at once (the vector
#      closure and random blobs, some large enough for multipart uploads);
#   2. a fresh store trusting only our key realises all of it from the bucket, and verifies;
#   3. real Nix 2.8 substitutes the same paths over HTTP from the website endpoint;
#   4. the objects carry the Content-Type and Cache-Control of store-format.md §7.5.
#
# Usage: GARAGE=/path/to/garage tests/garage.sh   (STORE=path/to/store, default
# target/debug/store, built if missing). Install Garage with
#   cargo install garage --no-default-features --features bundled-libs,sqlite
# Exits non-zero on any failure; stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
GARAGE=${GARAGE:-garage}
STORE=${STORE:-$repo/target/debug/store}
[ -x "$STORE" ] || cargo build --quiet
command -v "$GARAGE" >/dev/null || { echo "garage.sh: no garage binary (set GARAGE)" >&2; exit 1; }
command -v curl >/dev/null || { echo "garage.sh: needs curl" >&2; exit 1; }

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A port nothing listens on (bash's /dev/tcp connects, or fails on a free port).
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
api=$(free_port); rpc=$(free_port); web=$(free_port)
bucket=localhost          # the website endpoint picks the bucket by the Host header
key_id=GK5e0b2f7a1c9d3e4f60718293
key_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

cat > "$work/garage.toml" <<EOF
metadata_dir = "$work/meta"
data_dir = "$work/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$api"
root_domain = ".s3.garage.localhost"
[s3_web]
bind_addr = "127.0.0.1:$web"
root_domain = ".web.garage.localhost"
EOF
g() { "$GARAGE" -c "$work/garage.toml" "$@"; }
# Started directly, not through g, so that $! is the server's own PID.
"$GARAGE" -c "$work/garage.toml" server > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do g status >/dev/null 2>&1 && break; sleep 0.1; done
g layout assign -z dc1 -c 1G "$(g node id -q | cut -d@ -f1)" >/dev/null
g layout apply --version 1 >/dev/null
g bucket create "$bucket" >/dev/null
g bucket website --allow "$bucket" >/dev/null
g key import --yes "$key_id" "$key_secret" >/dev/null
g bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null
echo "garage.sh: Garage up (pid $server_pid, S3 127.0.0.1:$api, web 127.0.0.1:$web)"

export AWS_ACCESS_KEY_ID=$key_id AWS_SECRET_ACCESS_KEY=$key_secret
url="s3://$bucket?endpoint=http://127.0.0.1:$api&region=garage"
st() { local root=$1; shift; "$STORE" --root "$work/$root" --store-dir /nix/store "$@"; }

# The source store: the Nix 2.8 vector closure and twelve random blobs.
vectors=$repo/tests/fixtures/nix-2.8
root_path=/nix/store/a8z667l486sd21m8rs058ir3b2sh8k14-vec-c
st src realise -q --substituters "file://$vectors/caches/none" \
  --trusted-public-keys "$(cat "$vectors/keys/test-cache-1.pub")" "$root_path" >/dev/null
blobs=()
for i in $(seq 0 11); do
  size=$(( i % 5 == 0 ? 20 << 20 : 4096 + i ))
  head -c "$size" /dev/urandom > "$work/blob-$i"
  blobs+=("$(st src add "$work/blob-$i")")
done
st src key generate --name garage-test-1 --secret-file "$work/k.sec" --public-file "$work/k.pub"
public=$(cat "$work/k.pub")

# 1. Eight pushers of overlapping closures.
pids=()
for i in $(seq 0 7); do
  mine=()
  for j in $(seq $((i % 4)) 2 11); do mine+=("${blobs[$j]}"); done
  st src copy -q --to "$url" --secret-key-file "$work/k.sec" "$root_path" "${mine[@]}" \
    2> "$work/push-$i.log" &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { cat "$work/push-$i.log" >&2; echo "garage.sh: pusher $i failed" >&2; exit 1; }
done
echo "garage.sh: 8 concurrent pushes done"

# 2. A fresh store trusting only our key.
st dst realise -q --substituters "$url" --trusted-public-keys "$public" "$root_path" "${blobs[@]}" >/dev/null
st dst verify --all
echo "garage.sh: realised ${#blobs[@]} blobs and the vector closure from s3://, verified"

# 3. Nix 2.8 over HTTP from the website endpoint.
if command -v nix >/dev/null; then
  export NIX_CONFIG=$'build-users-group =\nsandbox = false\nexperimental-features = nix-command'
  HOME=$work/home nix copy --option trusted-public-keys "$public" \
    --from "http://localhost:$web" --to "$work/nix-dest" "$root_path" "${blobs[@]}"
  HOME=$work/home nix store verify --store "$work/nix-dest" --option trusted-public-keys "$public" \
    -r "$root_path" "${blobs[@]}"
  echo "garage.sh: Nix 2.8 substituted everything from the website endpoint"
else
  echo "garage.sh: *** SKIPPED the Nix step: no nix on PATH ***"
fi

# 4. Object metadata for a CDN.
hash=${root_path#/nix/store/}; hash=${hash%%-*}
headers=$(curl -sfI "http://localhost:$web/$hash.narinfo")
grep -qi '^content-type: text/x-nix-narinfo' <<<"$headers"
grep -qi '^cache-control: public, max-age=300' <<<"$headers"
nar=$(curl -sf "http://localhost:$web/$hash.narinfo" | sed -n 's/^URL: //p')
grep -qi '^cache-control: public, max-age=31536000, immutable' <<<"$(curl -sfI "http://localhost:$web/$nar")"
echo "garage.sh: Content-Type and Cache-Control as specified"
echo "garage.sh: OK"
