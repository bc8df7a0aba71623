#!/usr/bin/env bash
# Installs LiteLLM (proxy) into a virtualenv, idempotently: /opt/taos/litellm by default, or the
# prefix given as the first argument. Used by the test provisioning and later the installer.
#
# Pinned: litellm[proxy] and prisma. The proxy extra lacks the `prisma` module, without which
# LiteLLM answers a keyless request with 500 instead of 401 (see the LiteLLM reference notes);
# taos never uses LiteLLM's database, so only the module is needed, not its engines.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PREFIX="${1:-/opt/taos/litellm}"
LITELLM_VERSION="1.108.7"
PRISMA_VERSION="0.15.0"
STAMP="$PREFIX/.taos-installed-$LITELLM_VERSION-$PRISMA_VERSION"

if [ -f "$STAMP" ] && "$PREFIX/bin/litellm" --version >/dev/null 2>&1; then
    log "LiteLLM $LITELLM_VERSION already in $PREFIX"
    exit 0
fi
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import venv' 2>/dev/null || apt_install python3-venv
log "installing LiteLLM $LITELLM_VERSION into $PREFIX (a few minutes the first time)"
mkdir -p "$PREFIX"
"$PYTHON" -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check \
    "litellm[proxy]==$LITELLM_VERSION" "prisma==$PRISMA_VERSION"
"$PREFIX/bin/litellm" --version >/dev/null 2>&1 || { log "litellm did not install"; exit 1; }
touch "$STAMP"
log "LiteLLM ready: $PREFIX/bin/litellm"
