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
# A host running as root runs LiteLLM as this user ([llm] litellm_user): a system account with
# no login shell and no home of its own (it gets a private /tmp from the host).
LITELLM_USER="taos-litellm"

if [ "$(id -u)" -eq 0 ]; then
    if ! getent passwd "$LITELLM_USER" >/dev/null; then
        log "creating the system user $LITELLM_USER"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "taos LiteLLM" "$LITELLM_USER"
    fi
else
    log "not root: a host run by this user runs LiteLLM as this user too, so $LITELLM_USER is not needed"
fi

# The venv's interpreter must be one every user can run: a Python under /root (pyenv) is not,
# so prefer the system's.
if [ -z "${PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
# usable_by_litellm_user: whether $LITELLM_USER can run LiteLLM from the venv (trivially true
# when not root, where the host runs LiteLLM as its own user).
usable_by_litellm_user() {
    [ "$(id -u)" -ne 0 ] && return 0
    runuser -u "$LITELLM_USER" -- env -i HOME=/tmp LITELLM_LOCAL_MODEL_COST_MAP=True \
        "$PREFIX/bin/python3" -c 'import litellm' >/dev/null 2>&1
}

if [ -f "$STAMP" ] && "$PREFIX/bin/litellm" --version >/dev/null 2>&1 && usable_by_litellm_user; then
    log "LiteLLM $LITELLM_VERSION already in $PREFIX"
    exit 0
fi
# Debian's python3 makes venvs (with pip) only with python3-venv installed.
if [ "$PYTHON" = /usr/bin/python3 ] && command -v dpkg-query >/dev/null; then
    apt_install python3-venv
fi
"$PYTHON" -c 'import venv' 2>/dev/null || apt_install python3-venv
log "installing LiteLLM $LITELLM_VERSION into $PREFIX (a few minutes the first time)"
mkdir -p "$PREFIX"
"$PYTHON" -m venv --clear "$PREFIX"
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check \
    "litellm[proxy]==$LITELLM_VERSION" "prisma==$PRISMA_VERSION"
"$PREFIX/bin/litellm" --version >/dev/null 2>&1 || { log "litellm did not install"; exit 1; }
usable_by_litellm_user || { log "$LITELLM_USER cannot run $PREFIX/bin/python3"; exit 1; }
touch "$STAMP"
log "LiteLLM ready: $PREFIX/bin/litellm"
