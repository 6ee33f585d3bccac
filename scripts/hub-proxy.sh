#!/usr/bin/env bash
# JupyterHub's proxy, configurable-http-proxy, from npm at the versions autograder/hub/package-lock.json
# pins, installed into PREFIX (default: build/hub-proxy, ignored by git); prints the path of its
# command. A second run installs nothing unless the lock changed. Needs Node.js 20+ and npm.
#   bash scripts/hub-proxy.sh [PREFIX]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${1:-$repo/build/hub-proxy}"
lock="$repo/autograder/hub/package-lock.json"
bin="$prefix/node_modules/.bin/configurable-http-proxy"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "fpnlab: the hub's proxy needs Node.js 20+ and npm (https://nodejs.org, or nodesource's Debian packages)" >&2
  exit 1
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "fpnlab: configurable-http-proxy needs Node.js 20+, this is $(node --version)" >&2
  exit 1
fi
if [ ! -x "$bin" ] || ! cmp -s "$lock" "$prefix/package-lock.json"; then
  echo "fpnlab: installing configurable-http-proxy into $prefix (npm ci)" >&2
  mkdir -p "$prefix"
  cp "$repo/autograder/hub/package.json" "$lock" "$prefix/"
  npm ci --prefix "$prefix" --ignore-scripts --no-audit --no-fund --loglevel=error >&2
fi
echo "$bin"
