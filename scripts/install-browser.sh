#!/bin/sh
# Install headless Chromium and its WebDriver (Debian packages `chromium`, `chromium-driver`) for
# the report test, when they are missing and we run as root. Safe to run repeatedly.
set -e
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "install-browser: chromium/chromedriver missing; run as root: apt-get install -y chromium chromium-driver" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: no apt-get here; install Chromium and chromedriver with your package manager" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "install-browser: installed $(/usr/bin/chromium --version 2>/dev/null)"
