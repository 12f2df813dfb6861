#!/usr/bin/env bash
# berth's main command: builds berth (release), starts `berth server` with its built-in
# registry, DNS, Consul-compatible catalog and proxy, builds the example app (examples/hello: busybox httpd) as images v1 and v2,
# pushes them, deploys v1 with 3 replicas, prints where the instances answer and what to try
# next, and keeps the server in the foreground until Ctrl-C.
#
# On exit only the server stops. The app's containers keep running (each under its own
# monitor, as `berth ps` shows), and the state stays under the root (default
# /var/lib/berth, mode 0700: server.redb, server.token, registry-auth.json, registry/,
# images/, containers/): the next run.sh picks them up again. Remove the instances with
# `berth rm -f $(berth ps -q)`.
#
# The registry is closed to anonymous clients: on its first start berth server makes an admin
# credential and keeps it in $BERTH_ROOT/registry-auth.json (mode 0600), which berth on this
# host reads by itself and podman, skopeo and buildah take with --authfile; run.sh pushes
# the example with it and prints where it is.
#
# Environment: BERTH_ROOT (/var/lib/berth), BERTH_SERVER_LISTEN (127.0.0.1:7480),
# BERTH_REGISTRY_LISTEN (127.0.0.1:5000), BERTH_DNS_LISTEN (127.0.0.1:8600),
# BERTH_CATALOG_LISTEN (127.0.0.1:8500), BERTH_PROXY_LISTEN (127.0.0.1:8080),
# BERTH_CONFIG (node config, optional).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "run.sh: run as root (berth server runs containers on a bridge)" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo is required (install Rust with rustup)" >&2
    exit 1
fi
scripts/install-deps.sh >&2
cargo build --release --locked -p berth
berth="${CARGO_TARGET_DIR:-target}/release/berth"
export BERTH_ROOT=${BERTH_ROOT:-/var/lib/berth}
listen=${BERTH_SERVER_LISTEN:-127.0.0.1:7480}
registry=${BERTH_REGISTRY_LISTEN:-127.0.0.1:5000}
dns=${BERTH_DNS_LISTEN:-127.0.0.1:8600}
catalog=${BERTH_CATALOG_LISTEN:-127.0.0.1:8500}
proxy=${BERTH_PROXY_LISTEN:-127.0.0.1:8080}
export BERTH_SERVER=http://$listen
# The server's own variables would override the flags below; the flags say it all.
unset BERTH_SERVER_LISTEN BERTH_REGISTRY_LISTEN BERTH_DNS_LISTEN BERTH_CATALOG_LISTEN BERTH_PROXY_LISTEN

"$berth" server --listen "$listen" --registry-listen "$registry" \
    --dns-listen "$dns" --container-dns --catalog-listen "$catalog" --proxy-listen "$proxy" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server"; echo "berth server stopped; the hello instances keep running (berth ps)"' EXIT
trap 'exit 130' INT TERM
for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://$registry/healthz" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { echo "run.sh: berth server exited" >&2; exit 1; }
    sleep 0.1
done

credential="$BERTH_ROOT/registry-auth.json"
REGISTRY_AUTH_FILE="$credential" examples/hello/push.sh v1 "$registry"
REGISTRY_AUTH_FILE="$credential" examples/hello/push.sh v2 "$registry"
spec=$(mktemp --suffix=.toml)
sed "s#127.0.0.1:5000#$registry#" examples/hello/berth.toml > "$spec"
"$berth" deploy -f "$spec"
rm -f "$spec"

echo
echo "hello is live, through berth's proxy:"
echo "  curl -H 'Host: hello.localhost' http://$proxy/"
echo "its instances:"
"$berth" status hello --json | sed -n 's/.*"address": "\([0-9.]*\)".*/  curl http:\/\/\1:8080\//p'
cat <<CREDENTIAL

The registry at $registry is closed to anonymous clients. Its admin credential (user admin)
is in $credential (mode 0600, root only):
  berth on this host reads it by itself        (berth pull $registry/hello/web:v1, berth registry du --url http://$registry)
  podman push --authfile $credential --tls-verify=false IMAGE $registry/REPO:TAG
  skopeo/buildah: --authfile $credential (or export REGISTRY_AUTH_FILE=$credential)
  anonymous read-only pulls: anonymous_pull = true in the [registry] table of the config file (BERTH_CONFIG)
CREDENTIAL
cat <<NEXT

Next, in another shell (as root, with $berth or berth on PATH):
  berth status hello                                  # instances, health, events
  dig @${dns%:*} -p ${dns##*:} web.hello.berth SRV +short   # DNS of the healthy instances
  curl -s 'http://$catalog/v1/health/service/web.hello?passing'   # the Consul-compatible catalog
  berth deploy -f examples/hello/berth-v2.toml        # a rolling update to v2, no request lost
  berth routes                                        # the proxy: releases, requests, 5xx, p99
  berth releases hello
  berth rollback hello                                # back to v1
Ctrl-C stops the server; the instances keep running and the next run picks them up.
NEXT
wait "$server"
