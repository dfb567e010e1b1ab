#!/usr/bin/env bash
# Sets up everything ltcompress needs, idempotently: the Fashion-MNIST data (Debian package), a virtual
# environment in .venv (or $LTCOMPRESS_VENV), PyTorch, and ltcompress itself (editable, with test extras).
# With --tests it also installs headless Chromium (Debian package chromium), which only the test suite needs: it
# opens report.html in a real browser.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LTCOMPRESS_VENV:-.venv}
PACKAGES=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || PACKAGES+=(dataset-fashion-mnist)
if [ "${1:-}" = "--tests" ] && ! command -v chromium >/dev/null 2>&1; then PACKAGES+=(chromium); fi

if [ ${#PACKAGES[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
    echo "setup: installing Debian packages: ${PACKAGES[*]}"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
  else
    echo "setup: no apt-get here; install ${PACKAGES[*]} yourself (Fashion-MNIST: see README, Data)" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "setup: installing PyTorch (a few minutes the first time)"
  # the versions CI tests (x86-64 and aarch64 wheels alike); pyproject.toml asks for torch >= 2.10
  "${PIP[@]}" torch==2.14.1 torchvision==0.29.1
fi

echo "setup: installing ltcompress into $VENV"
"${PIP[@]}" -e ".[dev]"
echo "setup: done ($("$VENV/bin/ltcompress" --version))"
