#!/usr/bin/env bash
# Fetch the trained checkpoints (and, with --data, the course data): bash hw1_download.sh [--data]
# The files and their sha256 are listed in checkpoints.txt; checkpoints land in checkpoints/
# beside this script, where hw1_1.sh and hw1_2.sh look. Every flag goes to hw1_download.py (see
# --help); HW1_MIRROR=URL fetches each file from URL/<name>. PYTHON selects the interpreter
# (default python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/hw1_download.py" "$@"
