#!/usr/bin/env bash
# Builds the blog's image and pushes it to REGISTRY (host:port, default 127.0.0.1:5000) as
# blog/app:v1 and blog/app:v2: busybox httpd serving the blog (GET /), its health (/healthz)
# and GET /cgi-bin/session, which proves the secret file is there without showing it (its
# size and sha256); the same image runs the worker (a loop that writes to the shared volume).
#   examples/blog/push.sh [REGISTRY]
# Credentials: see examples/lib/image.sh (BERTH_REGISTRY_CREDS or REGISTRY_AUTH_FILE).
set -euo pipefail
registry=${1:-127.0.0.1:5000}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/image.sh
source "$here/../lib/image.sh"

for tag in v1 v2; do
    app=$(image_rootfs)
    image_add_busybox "$app" sh httpd cat wc sha256sum cut date sleep ls true echo
    mkdir -p "$app/www/cgi-bin" "$app/usr/bin"
    echo "blog $tag" > "$app/www/index.html"
    echo ok > "$app/www/healthz"
    cat > "$app/www/cgi-bin/session" <<'CGI'
#!/bin/sh
# The session key is a secret file (berth secret set blog SESSION_KEY): shown by size and
# digest only.
key=/run/secrets/session_key
printf 'Content-Type: text/plain\r\n\r\n'
if [ -r "$key" ]; then
    echo "session key: $(wc -c < "$key") bytes, sha256 $(sha256sum "$key" | cut -d' ' -f1)"
else
    echo "no session key"
fi
CGI
    chmod 755 "$app/www/cgi-bin/session"
    cat > "$app/usr/bin/worker" <<'WORKER'
#!/bin/sh
# The blog's worker: renders "posts" into the shared uploads volume, forever.
while true; do
    date > /var/lib/blog/uploads/last-render.txt
    sleep 5
done
WORKER
    chmod 755 "$app/usr/bin/worker"
    image_push "$registry" blog/app "$tag" "$app" '["httpd","-f","-p","3000","-h","/www"]' '["PATH=/bin:/usr/bin"]'
done
