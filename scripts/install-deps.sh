#!/usr/bin/env bash
# Installs what berth's tests and benchmarks need, from Debian's packages and crates.io.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

PACKAGES=(
    podman buildah skopeo umoci         # real clients for the registry tests
    busybox-static                      # copied into FROM-scratch test images
    docker-registry                     # CNCF distribution 2.8: the benchmark peer
    runc crun containernetworking-plugins uidmap fuse-overlayfs
    iptables iproute2 util-linux        # CNI portmap/bridge rules, ip, unshare/nsenter/umount
    jq curl openssl
    bind9-dnsutils dnsmasq-base         # dig for the DNS tests; dnsmasq is bench/dns's peer
    victoria-metrics python3-consul     # real clients of the Consul-compatible catalog (consul_sd_configs, python-consul)
    nginx-light wrk                     # bench/proxy's peer and the load generator
)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -q
    # Packages with services (nginx, prometheus, victoria-metrics) must not start them here:
    # tests and benchmarks run their own instances on free ports.
    policy=/usr/sbin/policy-rc.d
    had_policy=0
    [ -e "$policy" ] && had_policy=1
    [ "$had_policy" = 1 ] || printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}"
    [ "$had_policy" = 1 ] || rm -f "$policy"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "install-deps: installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
