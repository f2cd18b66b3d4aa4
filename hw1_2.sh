#!/usr/bin/env bash
# Grading entry point, Problem 2: bash hw1_2.sh <image_dir> <out_dir>
# Segments every .jpg in <image_dir> into <out_dir>/<name>.png palette masks. The checkpoint is
# checkpoints/p2_best.pth beside this script (where hw1_download.sh puts it); set
# HW1_P2_CHECKPOINT to use another. The interpreter is $PYTHON when set, else the
# repository's .venv/bin/python when it exists (the README installs there), else python3
# (utils/python.sh).
set -euo pipefail
if [ "$#" -ne 2 ]; then
    echo "usage: bash hw1_2.sh <image_dir> <out_dir>" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/utils/python.sh" "$here"
exec "$python" "$here/p2_inference.py" \
    --checkpoint "${HW1_P2_CHECKPOINT:-$here/checkpoints/p2_best.pth}" "$1" "$2"
