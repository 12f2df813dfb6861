#!/usr/bin/env bash
# Builds the hello image for TAG (v1 or v2) from Debian's busybox-static FROM scratch — one
# layer: /bin/busybox with its applets, /etc/passwd, /www/index.html from examples/hello/TAG/
# — and pushes it to REGISTRY (host:port, default 127.0.0.1:5000) as hello/web:TAG with
# the distribution API: the layer and config blobs in single POSTs, then the manifest.
#   examples/hello/push.sh v1 [REGISTRY]
# Credentials, for a registry that wants them (berth server's does): BERTH_REGISTRY_CREDS
# (user:password), or else the entry for REGISTRY in the auth file REGISTRY_AUTH_FILE (the
# format podman, skopeo and buildah read, as berth server writes it to
# /var/lib/berth/registry-auth.json).
set -euo pipefail
tag=${1:?usage: push.sh TAG [REGISTRY]}
registry=${2:-127.0.0.1:5000}
auth=()
if [ -n "${BERTH_REGISTRY_CREDS:-}" ]; then
    auth=(--user "$BERTH_REGISTRY_CREDS")
elif [ -n "${REGISTRY_AUTH_FILE:-}" ] && [ -r "$REGISTRY_AUTH_FILE" ]; then
    key=$(printf '%s' "$registry" | sed 's/[][\.*^$/]/\\&/g')
    basic=$(tr -d ' \n' < "$REGISTRY_AUTH_FILE" | sed -n "s/.*\"$key\":{\"auth\":\"\([^\"]*\)\".*/\1/p")
    if [ -n "$basic" ]; then auth=(-H "Authorization: Basic $basic"); fi
fi
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$here/$tag/index.html" ] || { echo "push.sh: no $here/$tag/index.html" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "push.sh: /bin/busybox is missing: apt-get install busybox-static" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/www" "$root/tmp"
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in sh httpd cat ls echo sleep wget; do ln -s busybox "$root/bin/$applet"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
cp "$here/$tag/index.html" "$root/www/index.html"
tar -C "$root" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$work/layer.tar" .
diff_id=sha256:$(sha256sum < "$work/layer.tar" | cut -d' ' -f1)
gzip -n -c "$work/layer.tar" > "$work/layer.tar.gz"
case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
printf '{"architecture":"%s","os":"linux","config":{"Cmd":["httpd","-f","-p","8080","-h","/www"],"Env":["PATH=/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$arch" "$diff_id" > "$work/config.json"

push_blob() { # FILE -> prints its digest
    local digest
    digest=sha256:$(sha256sum < "$1" | cut -d' ' -f1)
    curl -fsS -o /dev/null "${auth[@]}" -X POST -H 'Content-Type: application/octet-stream' \
        --data-binary "@$1" "http://$registry/v2/hello/web/blobs/uploads/?digest=$digest"
    echo "$digest"
}
layer=$(push_blob "$work/layer.tar.gz")
config=$(push_blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
    "$config" "$(stat -c %s "$work/config.json")" "$layer" "$(stat -c %s "$work/layer.tar.gz")" > "$work/manifest.json"
curl -fsS -o /dev/null "${auth[@]}" -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$work/manifest.json" "http://$registry/v2/hello/web/manifests/$tag"
echo "pushed $registry/hello/web:$tag"
