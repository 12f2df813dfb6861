#!/usr/bin/env bash
# Builds the hello image for TAG (v1 or v2) from Debian's busybox-static FROM scratch — one
# layer: /bin/busybox with its applets, /etc/passwd, /www/index.html from examples/hello/TAG/
# — and pushes it to REGISTRY (host:port, default 127.0.0.1:5000) as hello/web:TAG.
#   examples/hello/push.sh v1 [REGISTRY]
# Credentials: see examples/lib/image.sh (BERTH_REGISTRY_CREDS or REGISTRY_AUTH_FILE, as
# berth server writes it to /var/lib/berth/registry-auth.json).
set -euo pipefail
tag=${1:?usage: push.sh TAG [REGISTRY]}
registry=${2:-127.0.0.1:5000}
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$here/$tag/index.html" ] || { echo "push.sh: no $here/$tag/index.html" >&2; exit 1; }
# shellcheck source=../lib/image.sh
source "$here/../lib/image.sh"

root=$(image_rootfs)
image_add_busybox "$root" sh httpd cat ls echo sleep wget
mkdir -p "$root/www"
cp "$here/$tag/index.html" "$root/www/index.html"
image_push "$registry" hello/web "$tag" "$root" '["httpd","-f","-p","8080","-h","/www"]' '["PATH=/bin"]'
