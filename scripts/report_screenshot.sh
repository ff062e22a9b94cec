#!/usr/bin/env bash
# Render the HTML report of a ledger and load it in headless Chromium: take a screenshot
# and fail on anything the page logs to the console (script errors, Content-Security-
# Policy violations, blocked loads: the report must need nothing but itself), or if the
# page's own script did not run (a CSP nonce mismatch would stop it silently).
#
#   scripts/report_screenshot.sh LEDGER_DIR [OUT_DIR]
#
# Writes OUT_DIR (default ./report-screenshot)/report.html, report.png, dom.html and
# chromium.log. Environment: PYTHON (default python3; must import trainguard), CHROMIUM
# (default: chromium on PATH), WINDOW (default 1400,2000).
# Needs Chromium: on Debian/Ubuntu `apt-get install -y chromium`.
set -euo pipefail

ledger=${1:?usage: report_screenshot.sh LEDGER_DIR [OUT_DIR]}
out=${2:-report-screenshot}
python=${PYTHON:-python3}
window=${WINDOW:-1400,2000}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [ -z "$browser" ]; then
    echo "report_screenshot: no Chromium found (apt-get install -y chromium)" >&2
    exit 3
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
url=$("$python" - "$ledger" "$out/report.html" <<'PY'
import sys
from trainguard.report import build, write_html
print(write_html(build(sys.argv[1]), sys.argv[2]).resolve().as_uri())
PY
)

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run
       --no-default-browser-check --disable-extensions --user-data-dir="$profile"
       --enable-logging=stderr --v=0)
: > "$out/chromium.log"
timeout 120 "$browser" "${flags[@]}" --window-size="$window" --screenshot="$out/report.png" \
    "$url" >/dev/null 2>>"$out/chromium.log"
timeout 120 "$browser" "${flags[@]}" --dump-dom "$url" >"$out/dom.html" 2>>"$out/chromium.log"

status=0
if grep -n ':CONSOLE' "$out/chromium.log" >&2; then
    echo "report_screenshot: the page logged to the console (above)" >&2
    status=1
fi
if ! grep -q 'data-js="ok"' "$out/dom.html"; then
    echo "report_screenshot: the report's script did not run" >&2
    status=1
fi
if [ ! -s "$out/report.png" ]; then
    echo "report_screenshot: no screenshot was written" >&2
    status=1
fi
[ "$status" -eq 0 ] && echo "report_screenshot: ok: $out/report.png"
exit "$status"
