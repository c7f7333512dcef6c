#!/usr/bin/env bash
# Build the frozen one-folder studio (build.spec) from a clean venv holding only the runtime
# dependencies (no torch), run the frozen self-test and a frozen studio screenshot, and print the
# build time and unpacked size. Target: <= 350 MB on Linux.
#
#   bash bench/package.sh            # fresh venv each time (minutes: pip install + PyInstaller)
#   REUSE_VENV=1 bash bench/package.sh
#
# Env: PYTHON (interpreter for the venv; default python3), PKG_WORK (scratch folder; default
# /tmp/tessera-package), TARGET_MB (default 350). Output: dist/tessera/ and $PKG_WORK/summary.txt.
# Without assets/models/shapes the build ships a tiny random-weight bundle (training.export.
# make_tiny_bundle, built with PYTHON, which then needs the training extras): the self-test then
# checks the installation, not the model's quality.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
WORK=${PKG_WORK:-/tmp/tessera-package}
VENV=$WORK/venv
TARGET_MB=${TARGET_MB:-350}
NICE="nice -n 10"  # the machine is shared: stay polite
mkdir -p "$WORK"
say() { echo "package: $*" | tee -a "$WORK/summary.txt"; }
: > "$WORK/summary.txt"

# 1. A clean venv with the project's runtime dependencies and PyInstaller only.
t0=$(date +%s)
if [ -z "${REUSE_VENV:-}" ] || [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    if ! $NICE "$VENV/bin/python" -m pip install "$ROOT" pyinstaller > "$WORK/pip.log" 2>&1; then
        tail -20 "$WORK/pip.log" >&2
        exit 1
    fi
fi
if "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)"; then
    echo "package: torch is installed in $VENV: the build must come from the runtime dependencies only" >&2
    exit 1
fi
t1=$(date +%s)
say "venv          $((t1 - t0)) s ($VENV: pip install . pyinstaller; torch absent)"

# 2. The model bundle: the trained one, or a tiny stand-in staged through TESSERA_ASSETS.
if [ -f assets/models/shapes/manifest.json ]; then
    unset TESSERA_ASSETS
    say "model bundle  assets/models/shapes ($(du -sm assets/models/shapes | cut -f1) MB)"
else
    export TESSERA_ASSETS=$WORK/assets
    rm -rf "$TESSERA_ASSETS"
    mkdir -p "$TESSERA_ASSETS/models"
    cp -r assets/icons assets/styles "$TESSERA_ASSETS/"
    "$PY" - "$TESSERA_ASSETS/models/shapes" <<'EOF'
import sys

from engine.instructions import Task
from training.data.shapes import SEG_CLASSES
from training.export import make_tiny_bundle

# every task, so that the frozen self-test reaches each of its steps
make_tiny_bundle(sys.argv[1], extra={"tasks": [t.value for t in Task], "seg_classes": list(SEG_CLASSES)})
EOF
    say "model bundle  assets/models/shapes is absent: using a TINY RANDOM-WEIGHT bundle via TESSERA_ASSETS=$TESSERA_ASSETS"
fi

# 3. PyInstaller (--clean: no cache from an earlier build). Wall time depends on what else the machine
# runs; the CPU time (user + sys, PyInstaller and its children) is the steadier figure.
TIMEFORMAT="%R %U %S"
if ! { time $NICE "$VENV/bin/pyinstaller" build.spec --noconfirm --clean --log-level WARN \
        --workpath build/pyinstaller --distpath dist > "$WORK/pyinstaller.log" 2>&1; } 2> "$WORK/time.txt"; then
    tail -30 "$WORK/pyinstaller.log" >&2
    say "build         FAILED (log: $WORK/pyinstaller.log)"
    exit 1
fi
read -r wall user sys < "$WORK/time.txt"
size=$(du -sm dist/tessera | cut -f1)
say "build time    ${wall%.*} s wall, $(awk "BEGIN {printf \"%.0f\", $user + $sys}") s CPU (log: $WORK/pyinstaller.log)"
say "size          ${size} MB unpacked (du -sm dist/tessera; target <= ${TARGET_MB} MB), of which the model bundle $(du -sm dist/tessera/_internal/assets/models | cut -f1) MB"
say "biggest       $(du -sm dist/tessera/_internal/* | sort -rn | head -8 | awk '{printf "%s %s MB, ", $2, $1}' \
    | sed "s|dist/tessera/_internal/||g; s|, $||")"
say "system libs   $(find dist/tessera/_internal -maxdepth 1 -type f -name '*.so*' -printf '%s\n' \
    | awk '{s += $1} END {printf "%.0f MB", s / 1e6}') in $(find dist/tessera/_internal -maxdepth 1 -type f -name '*.so*' | wc -l) top-level .so files"
# Host libraries PyInstaller could not find, needed by a binary that is still in the build.
missing=$(grep -o "could not resolve '[^']*', dependency of '[^']*'" "$WORK/pyinstaller.log" | sort -u \
    | while IFS="'" read -r _ lib _ user _; do
        if find dist/tessera -name "$(basename "$user")" | grep -q .; then echo "$lib"; fi
    done | sort -u | tr '\n' ' ' || true)
if [ -n "$missing" ]; then
    say "not bundled   ${missing}(absent on this machine: the target must provide them, see docs/INSTALL.md)"
fi
if find dist/tessera -ipath '*torch*' | grep -q .; then
    say "torch         FOUND in the build: $(find dist/tessera -ipath '*torch*' | head -3 | tr '\n' ' ')"
    exit 1
fi

# 4. The frozen build checks itself: headless, its own bundled model (TESSERA_ASSETS unset), a scratch home.
unset TESSERA_ASSETS
export QT_QPA_PLATFORM=offscreen TESSERA_HOME=$WORK/home
rm -rf "$TESSERA_HOME"
status=0
t4=$(date +%s)
if dist/tessera/tessera --self-test > "$WORK/self-test.txt" 2>&1; then result=passed; else result=FAILED; status=1; fi
t5=$(date +%s)
sed 's/^/    /' "$WORK/self-test.txt"
say "self-test     $result in $((t5 - t4)) s (dist/tessera/tessera --self-test; output: $WORK/self-test.txt)"
if dist/tessera/tessera studio --demo --screenshot "$WORK/studio.png" > "$WORK/studio.txt" 2>&1 \
        && [ -s "$WORK/studio.png" ]; then
    style=$(grep -o "style [a-z]*" "$TESSERA_HOME"/logs/*.log 2>/dev/null | head -1 || true)
    say "studio        screenshot ok ($WORK/studio.png; ${style:-style unknown})"
else
    tail -5 "$WORK/studio.txt" >&2
    say "studio        FAILED to render a screenshot (output: $WORK/studio.txt)"
    status=1
fi
if [ "$size" -gt "$TARGET_MB" ]; then
    say "size          OVER the ${TARGET_MB} MB target"
    status=1
fi
exit $status
