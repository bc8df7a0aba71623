#!/usr/bin/env bash
# Benchmarks the desktop app and writes the "Desktop app" section of docs/benchmarks.md:
#   - cold start of the release app to its first screen (target: < 1 s)
#   - idle RSS of the app process (target: < 150 MB), and of its web content process
#   - the .deb's size (target: < 15 MB)
#   - opening a cached channel of 5 000 messages (target: < 200 ms)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/dev-app.sh"
"$REPO_ROOT/scripts/build-ui.sh"
log "building the app (release) and its .deb"
# The UI is built above (the config has no before-build command); the CLI runs from src-tauri.
(cd src-tauri && ../ui/node_modules/.bin/tauri build --bundles deb >/dev/null)
APP="$CARGO_TARGET_DIR/release/taos-app"
# The newest .deb (an older version's may still lie next to it).
DEB="$(find "$CARGO_TARGET_DIR/release/bundle/deb" -maxdepth 1 -name '*.deb' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2-)"
cargo build --release --locked -p taos-e2e --bin taos-app-bench
export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
DRIVER="$(command -v tauri-driver || echo "$CARGO_HOME/bin/tauri-driver")"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log "measuring the app under Xvfb"
JSON="$(xvfb-run -a -s "-screen 0 1280x800x24" dbus-run-session -- bash -c "
    export HOME=\$(mktemp -d) TAOS_APP_DATA_DIR=\$(mktemp -d)
    '$DRIVER' --port $PORT --native-port $NPORT >/dev/null 2>&1 & D=\$!
    for _ in \$(seq 100); do curl -sf http://127.0.0.1:$PORT/status >/dev/null && break; sleep 0.2; done
    '$CARGO_TARGET_DIR/release/taos-app-bench' '$APP' $PORT
    kill \$D 2>/dev/null || true
" 2>/dev/null | grep '^{')"
echo "$JSON"
DEB_MB=$(python3 -c "import os,sys; print(round(os.path.getsize(sys.argv[1]) / 1e6, 1))" "$DEB")
j() { python3 -c "import json,sys; v=json.loads(sys.argv[1]);
for k in sys.argv[2].split('.'): v=v[k]
print(v)" "$JSON" "$1"; }
verdict() { python3 -c "import sys; print('met' if eval(sys.argv[1]) else 'NOT met')" "$1"; }

SECTION="$(cat <<MD
## Desktop app (issue 8)

| what | result | target | |
|---|---|---|---|
| cold start of the release app → pairing screen shown (median of 3, WebDriver session start included) | $(j window.first_screen_ms_median) ms | < 1 s | $(verdict "$(j window.first_screen_ms_median) < 1000") |
| idle RSS of the app process after 10 s | $(j window.idle_rss.app_process_mib) MiB, of which $(j window.idle_rss.app_private_mib) MiB private (\`RssAnon\`) and the rest shared libraries; PSS $(j window.idle_rss.app_pss_mib) MiB (web content process: $(j window.idle_rss.web_processes_mib) MiB) | < 150 MB | $(verdict "$(j window.idle_rss.app_process_mib) < 143") |
| \`.deb\` | $DEB_MB MB | < 15 MB | $(verdict "$DEB_MB < 15") |
| open a cached channel of $(j cache.messages) messages (cache reopened, all rows read and parsed; median of 10) | $(j cache.open_ms_median) ms (max $(python3 -c "print(round($(j cache.open_ms_max), 1))")) | < 200 ms | $(verdict "$(j cache.open_ms_max) < 200") |

How: \`scripts/bench-app.sh\` builds the release app and its \`.deb\` (\`tauri build --bundles deb\`), then
\`taos-app-bench\` (tests/src/bin) starts it three times through tauri-driver under Xvfb and a
private D-Bus session and times the WebDriver session request until the pairing screen's code
field exists — an upper bound on first paint, since WebKitWebDriver's own start is included. RSS
is \`VmRSS\` of the \`taos-app\` process and, separately, of WebKitGTK's web content process; most of
the app process's RSS is file-backed pages of WebKitGTK, JavaScriptCore and ICU, shared with the
web process and the page cache, while its own heap is \`RssAnon\`; PSS splits shared pages
between the processes that map them. The target is not met by the RSS measure. Where it goes
(measured with smaps, 157 MiB in all): Mesa and LLVM 52 MiB (libLLVM-15 alone 43 — WebKit 2.50
always sets up EGL in the app process when it loads its first page, and Debian's Mesa driver
links LLVM), libwebkit2gtk 24, JavaScriptCore 12, the flite speech libraries WebKit links 10,
GTK/GLib/Pango/X11 16, the taos-app binary 10, heap and anonymous memory 10, shared-memory
frame buffers 6-8. Settings tried and their effect on the app process: WebKit's compositing
off or \`WEBKIT_DISABLE_DMABUF_RENDERER=1\` −0 to −5 MiB (and GPU compositing lost, which on a
Pi means slower scrolling), \`GDK_GL=disable\`, \`MALLOC_ARENA_MAX=2\`, no accessibility bus, the
DocumentViewer cache model, \`malloc_trim\` after first paint: each within −2 MiB. With no EGL at
all the app process drops to 87 MiB, but WebKit's web process then refuses to start. So
reaching the target means a lighter web engine, not changes in taos. The
cache figure is \`taos-client\`'s SQLite cache, reopened as at app start.
MD
)"
python3 - "$SECTION" <<'PY'
import re, sys
path = "docs/benchmarks.md"
doc = open(path).read()
section = sys.argv[1].rstrip() + "\n"
start = doc.find("## Desktop app (issue 8)")
if start >= 0:
    rest = doc[start + 1:]
    m = re.search(r"^## ", rest, re.M)
    end = start + 1 + m.start() if m else len(doc)
    doc = doc[:start] + section + ("\n" + doc[end:] if m else "")
else:
    doc = doc.rstrip() + "\n\n" + section
open(path, "w").write(doc)
PY
log "wrote the Desktop app section of docs/benchmarks.md"
