#!/usr/bin/env bash
# Fetch the trained checkpoints (and, with --data, the course data): bash hw1_download.sh [--data]
# The files and their sha256 are listed in checkpoints.txt; checkpoints land in checkpoints/
# beside this script, where hw1_1.sh and hw1_2.sh look. Every flag goes to hw1_download.py (see
# --help); HW1_MIRROR=URL fetches each file from URL/<name>. The interpreter is $PYTHON when
# set, else the repository's .venv/bin/python when it exists, else python3 (utils/python.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/utils/python.sh" "$here"
exec "$python" "$here/hw1_download.py" "$@"
