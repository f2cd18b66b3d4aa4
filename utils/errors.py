"""User-facing errors, and the command-line wrapper that reports them as one line.

Library code raises :class:`UserError` for anything the user can fix (a path, a flag, a file).
Scripts run their ``main`` through :func:`run_cli`, which prints such an error as a single
``error: ...`` line on stderr and returns a non-zero exit code, without a traceback.
"""
import signal
import sys
import warnings


class UserError(Exception):
    """A problem with the user's input, reported as one line naming the culprit."""


class Interrupted(UserError):
    """Work stopped on a signal after saving what it could; the exit code is 128 + the signal's number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


def brief(error, limit=160):
    """An exception's message squeezed onto one line (for embedding in a one-line error)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + "..."  # at a word's end, not in its middle


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=file or sys.stderr, flush=True)


def run_cli(main, parser, argv=None):
    """Parse arguments, run ``main(args)`` and turn user errors into a one-line message.

    Args:
        main: the script's ``main(args)``.
        parser: the script's ``argparse`` parser.
        argv: arguments to parse (default: ``sys.argv[1:]``).

    Returns:
        The process exit code: 0 on success, 2 on a user error (or the error's own
        ``exit_code``: 128 + the signal for a training run stopped by one), 130 on Ctrl-C.
    """
    args = parser.parse_args(argv)
    if signal.getsignal(signal.SIGINT) is signal.SIG_DFL:  # set by utils.quiet_start while the imports ran
        signal.signal(signal.SIGINT, signal.default_int_handler)
    warnings.showwarning = _one_line_warning
    try:
        main(args)
    except UserError as e:
        # A stop on a signal is the expected way to pause (it printed how to continue), not an error.
        print(f"{parser.prog}: {'' if isinstance(e, Interrupted) else 'error: '}{e}", file=sys.stderr, flush=True)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    return 0
