#!/usr/bin/env bash
# Installs the system packages that tests and the demo need, only when missing. Idempotent.
set -euo pipefail
# sshd, ip live in sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# command -> Debian package
declare -A wanted=(
  [redis-server]=redis-server
  # the SSH test lab (tests/lab/): sshd per provider host, network namespaces, mount/UTS namespaces
  [sshd]=openssh-server
  [ssh]=openssh-client
  [ssh-keygen]=openssh-client
  [ip]=iproute2
  [unshare]=util-linux
  [nsenter]=util-linux
  # the lab's signed apt repository (tests/lab/aptrepo.py): dpkg-deb/dpkg-scanpackages, and gpg to sign it
  [dpkg-scanpackages]=dpkg-dev
  [gpg]=gnupg
)

# etcd for the real control plane (testkit/realkube.py): Debian's etcd-server, fetched once into a cache
# outside the repo and unpacked there with dpkg -x -- never installed, so no etcd service. realkube finds
# it at <cache>/etcd/root/usr/bin/etcd (and fetches it the same way itself when it is missing).
fetch_etcd() {
  local cache="${WORLDLAND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/worldland}/etcd"
  [ -x "$cache/root/usr/bin/etcd" ] && return 0
  command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 || {
    echo "no apt-get/dpkg: etcd not fetched (the Kubernetes tests fall back to the test server)" >&2
    return 0
  }
  mkdir -p "$cache"
  local opts=()
  [ "$(id -u)" -eq 0 ] && opts=(-o APT::Sandbox::User=root)  # root's apt would hand the download to _apt
  if ! ls "$cache"/etcd-server_*.deb >/dev/null 2>&1; then
    # a fresh image may have no package lists yet: update them once (as root) and try again
    (cd "$cache" && apt-get "${opts[@]}" download -q etcd-server) ||
      { [ "$(id -u)" -eq 0 ] && apt-get update -qq && (cd "$cache" && apt-get "${opts[@]}" download -q etcd-server); } ||
      { echo "apt-get download etcd-server failed: etcd not fetched" >&2; return 0; }
  fi
  local deb tmp
  deb=$(ls "$cache"/etcd-server_*.deb | tail -n 1)
  tmp=$(mktemp -d "$cache/.root.XXXXXX")
  if dpkg -x "$deb" "$tmp"; then
    rm -rf "$cache/root" && mv "$tmp" "$cache/root" && echo "etcd: $cache/root/usr/bin/etcd ($(basename "$deb"))"
  else
    echo "dpkg -x $deb failed: etcd not unpacked" >&2
  fi
  rm -rf "$tmp"
}

# promtool and prometheus for the alert rules' tests and the demo (testkit/prometheus.py): Debian's
# prometheus package, fetched once into <cache>/prometheus and unpacked there with dpkg -x -- never
# installed, so no prometheus service. testkit/prometheus.py finds them at <cache>/prometheus/root/usr/bin/
# (and fetches them the same way itself when they are missing).
fetch_prometheus() {
  local cache="${WORLDLAND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/worldland}/prometheus"
  [ -x "$cache/root/usr/bin/promtool" ] && [ -x "$cache/root/usr/bin/prometheus" ] && return 0
  command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 || {
    echo "no apt-get/dpkg: prometheus not fetched (the alert rules' tests are skipped)" >&2
    return 0
  }
  mkdir -p "$cache"
  local opts=()
  [ "$(id -u)" -eq 0 ] && opts=(-o APT::Sandbox::User=root)  # root's apt would hand the download to _apt
  if ! ls "$cache"/prometheus_*.deb >/dev/null 2>&1; then
    (cd "$cache" && apt-get "${opts[@]}" download -q prometheus) ||
      { [ "$(id -u)" -eq 0 ] && apt-get update -qq && (cd "$cache" && apt-get "${opts[@]}" download -q prometheus); } ||
      { echo "apt-get download prometheus failed: prometheus not fetched" >&2; return 0; }
  fi
  local deb tmp
  deb=$(ls "$cache"/prometheus_*.deb | tail -n 1)
  tmp=$(mktemp -d "$cache/.root.XXXXXX")
  if dpkg -x "$deb" "$tmp"; then
    rm -rf "$cache/root" && mv "$tmp" "$cache/root" && echo "prometheus: $cache/root/usr/bin/{prometheus,promtool} ($(basename "$deb"))"
  else
    echo "dpkg -x $deb failed: prometheus not unpacked" >&2
  fi
  rm -rf "$tmp"
}

# Debian's packages for the lab's apt repository (tests/lab/aptrepo.py): containerd, runc,
# containernetworking-plugins, iptables and those of their dependencies this machine lacks (the lab hosts
# start with its dpkg status), fetched once into <cache>/debs -- never installed. aptrepo.py fetches the
# same way when they are missing (and follows only one alternative of a dependency; this takes all).
fetch_lab_debs() {
  local cache="${WORLDLAND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/worldland}/debs"
  local names=(containerd runc containernetworking-plugins iptables)
  command -v apt-get >/dev/null 2>&1 && command -v apt-cache >/dev/null 2>&1 &&
    command -v dpkg-query >/dev/null 2>&1 || {
    echo "no apt-get/apt-cache/dpkg-query: lab repository packages not fetched" >&2
    return 0
  }
  mkdir -p "$cache"
  exec 9>"$cache/.lock"  # the lock aptrepo.py takes too (parallel pytest workers)
  command -v flock >/dev/null 2>&1 && flock 9
  local opts=()
  [ "$(id -u)" -eq 0 ] && opts=(-o APT::Sandbox::User=root)
  closure() {
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
      --no-enhances "${names[@]}" | grep -v '^[ <]' | sed 's/:.*//' | sort -u
  }
  local all
  all=$(closure 2>/dev/null) && [ -n "$all" ] ||
    { [ "$(id -u)" -eq 0 ] && apt-get update -qq && all=$(closure); } ||
    { echo "apt-cache depends failed: lab repository packages not fetched" >&2; return 0; }
  local fetch=() pkg
  for pkg in $all; do
    case " ${names[*]} " in
      *" $pkg "*) ;;  # the packages themselves, installed here or not
      *) dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null | grep -q '^.i' && continue ;;
    esac
    ls "$cache/${pkg}"_*.deb >/dev/null 2>&1 || fetch+=("$pkg")
  done
  [ ${#fetch[@]} -eq 0 ] && return 0
  local tmp
  tmp=$(mktemp -d "$cache/.partial.XXXXXX")
  if (cd "$tmp" && apt-get "${opts[@]}" download -q "${fetch[@]}"); then
    mv "$tmp"/*.deb "$cache"/ && echo "lab repository packages: ${fetch[*]} in $cache"
  else
    echo "apt-get download ${fetch[*]} failed: lab repository packages not fetched" >&2
  fi
  rm -rf "$tmp"
}

# Debian's cron and cron-daemon-common (its pre-dependency; everything else cron needs is installed here),
# fetched once into <cache>/debs -- never installed here: tests/test_audit_ansible.py installs them with
# dpkg inside a kube-mode lab host (private /usr, /etc, /var, /run). Installed here, cron would be enabled
# for this machine's own crontabs, and its spool (/var/spool/cron) is shared by the non-kube lab hosts.
# aptrepo.fetch_debian_debs(("cron",)) fetches the same way when they are missing.
fetch_cron_debs() {
  local cache="${WORLDLAND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/worldland}/debs"
  command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: cron not fetched" >&2; return 0; }
  mkdir -p "$cache"
  exec 9>"$cache/.lock"  # the lock aptrepo.py takes too (fd 9 again: a second fd would wait on the first)
  command -v flock >/dev/null 2>&1 && flock 9
  local fetch=() pkg
  for pkg in cron cron-daemon-common; do
    ls "$cache/${pkg}"_*.deb >/dev/null 2>&1 || fetch+=("$pkg")
  done
  [ ${#fetch[@]} -eq 0 ] && return 0
  local opts=()
  [ "$(id -u)" -eq 0 ] && opts=(-o APT::Sandbox::User=root)
  local tmp
  tmp=$(mktemp -d "$cache/.partial.XXXXXX")
  if (cd "$tmp" && apt-get "${opts[@]}" download -q "${fetch[@]}") ||
    { [ "$(id -u)" -eq 0 ] && apt-get update -qq && (cd "$tmp" && apt-get "${opts[@]}" download -q "${fetch[@]}"); }; then
    mv "$tmp"/*.deb "$cache"/ && echo "cron packages: ${fetch[*]} in $cache"
  else
    echo "apt-get download ${fetch[*]} failed: cron not fetched" >&2
  fi
  rm -rf "$tmp"
}

missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${wanted[$cmd]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  fetch_etcd
  fetch_prometheus
  fetch_lab_debs
  fetch_cron_debs
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# policy-rc.d keeps the packages' own services from starting: tests start their own servers.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && created_policy=1
fi
trap '[ -n "$created_policy" ] && $sudo rm -f "$policy"' EXIT
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fetch_etcd
fetch_prometheus
fetch_lab_debs
fetch_cron_debs
