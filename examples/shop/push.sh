#!/usr/bin/env bash
# Builds the shop's images and pushes them to REGISTRY (host:port, default 127.0.0.1:5000):
#   shop/db:7      Redis 7 from Debian's redis-tools package (downloaded with apt-get download,
#                  with the libraries it needs from Debian's packages on this host), appendonly
#                  into /data: the app's named volume keeps its data through every deploy
#   shop/web:v1    busybox httpd; GET /cgi-bin/visit counts visits in Redis (INCR over the
#   shop/web:v2    wire with busybox nc) and says which version answered
#   examples/shop/push.sh [REGISTRY]
# Credentials: see examples/lib/image.sh (BERTH_REGISTRY_CREDS or REGISTRY_AUTH_FILE).
set -euo pipefail
registry=${1:-127.0.0.1:5000}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/image.sh
source "$here/../lib/image.sh"

# --- db: Redis from Debian's packages -----------------------------------------------------
debs=$image_work/debs
mkdir -p "$debs"
(cd "$debs" && apt-get download -q redis-tools libjemalloc2 liblzf1 >/dev/null 2>&1) || {
    apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    (cd "$debs" && apt-get download -q redis-tools libjemalloc2 liblzf1 >/dev/null)
}
db=$(image_rootfs)
for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$db"; done
# The libraries redis needs that the host has (libc, libssl, libsystemd, ...), from the host's
# Debian packages, at the same paths.
export LD_LIBRARY_PATH="$db/usr/lib/x86_64-linux-gnu:$db/usr/lib/aarch64-linux-gnu:$db/usr/lib"
ldd "$db/usr/bin/redis-check-rdb" | grep -o '/[^ ]*' | while read -r lib; do
    case $lib in "$db"/*) continue ;; esac
    mkdir -p "$db$(dirname "$lib")"
    cp -L "$lib" "$db$lib"
done
unset LD_LIBRARY_PATH
ln -sf redis-check-rdb "$db/usr/bin/redis-server"
mkdir -p "$db/data"
cat > "$db/etc/redis.conf" <<'CONF'
bind 0.0.0.0
port 6379
protected-mode no
dir /data
appendonly yes
appendfsync everysec
save ""
CONF
image_push "$registry" shop/db 7 "$db" '["/usr/bin/redis-server","/etc/redis.conf"]' '["PATH=/usr/bin:/bin"]'

# --- web: busybox httpd and a CGI that talks to Redis --------------------------------------
for tag in v1 v2; do
    web=$(image_rootfs)
    image_add_busybox "$web" sh httpd nc cat tr printf echo
    mkdir -p "$web/www/cgi-bin"
    echo "shop $tag" > "$web/www/index.html"
    echo ok > "$web/www/up"
    cat > "$web/www/cgi-bin/visit" <<CGI
#!/bin/sh
# One visit: INCR in Redis (db.shop.berth, berth's DNS), then the count and this version.
count=\$(printf 'INCR visits\r\n' | nc -w 2 "\${REDIS_HOST:-db.shop.berth}" 6379 | tr -d '\r:')
if [ -z "\$count" ]; then
    printf 'HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nno answer from the database\n'
    exit 0
fi
printf 'Content-Type: text/plain\r\n\r\n'
echo "shop $tag: visit \$count"
CGI
    chmod 755 "$web/www/cgi-bin/visit"
    image_push "$registry" shop/web "$tag" "$web" '["httpd","-f","-p","8080","-h","/www"]' '["PATH=/bin"]'
done
