# Shared by the examples' push.sh scripts (source it): builds a one-layer image FROM scratch
# out of a root filesystem directory and pushes it with the distribution API (the layer and
# config blobs in single POSTs, then the manifest), with curl only.
#
# Credentials, for a registry that wants them (berth server's does): BERTH_REGISTRY_CREDS
# (user:password), or else the entry for the registry in the auth file REGISTRY_AUTH_FILE
# (the format podman, skopeo and buildah read, as berth server writes it to
# <root>/registry-auth.json).
#
#   source examples/lib/image.sh
#   rootfs=$(image_rootfs)                       # an empty root filesystem to fill
#   image_add_busybox "$rootfs" sh httpd cat     # Debian's busybox-static and applets
#   image_push REGISTRY REPO TAG "$rootfs" '["httpd","-f","-p","8080"]' '["PATH=/bin"]'

set -euo pipefail

image_work=$(mktemp -d)
trap 'rm -rf "$image_work"' EXIT

# Prints the path of a new, empty root filesystem (with /tmp and /etc/passwd for root).
image_rootfs() {
    local root
    root=$(mktemp -d -p "$image_work" rootfs.XXXXXX)
    mkdir -p "$root/bin" "$root/etc" "$root/tmp"
    chmod 1777 "$root/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
    printf 'root:x:0:\n' > "$root/etc/group"
    echo "$root"
}

# image_add_busybox ROOTFS APPLET... : Debian's static busybox and a symlink per applet.
image_add_busybox() {
    local root=$1
    shift
    [ -x /bin/busybox ] || { echo "push.sh: /bin/busybox is missing: apt-get install busybox-static" >&2; exit 1; }
    cp /bin/busybox "$root/bin/busybox"
    local applet
    for applet in "$@"; do ln -sf busybox "$root/bin/$applet"; done
}

# The curl options that authenticate to REGISTRY (none when no credential is known).
image_auth() {
    local registry=$1 key basic
    if [ -n "${BERTH_REGISTRY_CREDS:-}" ]; then
        printf '%s\n' --user "$BERTH_REGISTRY_CREDS"
    elif [ -n "${REGISTRY_AUTH_FILE:-}" ] && [ -r "$REGISTRY_AUTH_FILE" ]; then
        key=$(printf '%s' "$registry" | sed 's/[][\.*^$/]/\\&/g')
        basic=$(tr -d ' \n' < "$REGISTRY_AUTH_FILE" | sed -n "s/.*\"$key\":{\"auth\":\"\([^\"]*\)\".*/\1/p")
        if [ -n "$basic" ]; then printf '%s\n' -H "Authorization: Basic $basic"; fi
    fi
}

# image_push REGISTRY REPO TAG ROOTFS CMD_JSON ENV_JSON
image_push() {
    local registry=$1 repo=$2 tag=$3 root=$4 cmd=$5 env=$6
    local dir arch diff_id layer config auth=()
    dir=$(mktemp -d -p "$image_work" image.XXXXXX)
    mapfile -t auth < <(image_auth "$registry")
    tar -C "$root" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$dir/layer.tar" .
    diff_id=sha256:$(sha256sum < "$dir/layer.tar" | cut -d' ' -f1)
    gzip -n -c "$dir/layer.tar" > "$dir/layer.tar.gz"
    case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
    printf '{"architecture":"%s","os":"linux","config":{"Cmd":%s,"Env":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
        "$arch" "$cmd" "$env" "$diff_id" > "$dir/config.json"
    image_blob() { # FILE -> prints its digest
        local digest
        digest=sha256:$(sha256sum < "$1" | cut -d' ' -f1)
        curl -fsS -o /dev/null "${auth[@]}" -X POST -H 'Content-Type: application/octet-stream' \
            --data-binary "@$1" "http://$registry/v2/$repo/blobs/uploads/?digest=$digest"
        echo "$digest"
    }
    layer=$(image_blob "$dir/layer.tar.gz")
    config=$(image_blob "$dir/config.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
        "$config" "$(stat -c %s "$dir/config.json")" "$layer" "$(stat -c %s "$dir/layer.tar.gz")" > "$dir/manifest.json"
    curl -fsS -o /dev/null "${auth[@]}" -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
        --data-binary "@$dir/manifest.json" "http://$registry/v2/$repo/manifests/$tag"
    echo "pushed $registry/$repo:$tag"
}
