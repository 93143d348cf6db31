# Sourced by scripts/test.sh: make sure Debian's headless Chromium is there for the report test
# (tests/stress/test_report.py renders the stress report and screenshots it). Installs the
# `chromium` package with apt-get when the machine has it and we are root (or have sudo -n);
# otherwise the test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
    fi
    if [ "$SUDO" != "none" ]; then
      echo "installing Debian's chromium for the report screenshot test..." >&2
      export DEBIAN_FRONTEND=noninteractive
      $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq chromium >/dev/null 2>&1; } \
        || echo "warning: could not install chromium; the report screenshot test will skip" >&2
    fi
  fi
fi
