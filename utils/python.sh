# Sourced by the shell entry points (hw1_1.sh, hw1_2.sh, hw1_download.sh, benchmarks/gpu_check.sh):
# sets $python to the interpreter they run, given the repository's folder as $1. It is $PYTHON
# when set (the grader's or the user's choice), else the repository's .venv/bin/python when it
# exists (where the README installs), else python3.
python="python3"
if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -x "$1/.venv/bin/python" ]; then
    python="$1/.venv/bin/python"
fi
