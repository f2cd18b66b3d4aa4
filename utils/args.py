"""Argument parsing shared by every script: a one-line-error parser, its help formatter, and the
checks and types of flags. The flags of the training, inference and figure scripts are declared
in :mod:`config.flags`."""
import argparse
from pathlib import Path

from utils.errors import UserError

REPO = Path(__file__).resolve().parent.parent

# Under float16 the gradient scaler skips a step whose gradients overflow and halves its scale;
# 32 halvings take its first scale, 2**16, to 2**-16, where float16 gradients vanish: a step
# still not finite then is no overflow but a run gone wrong (too high a learning rate, NaN data).
MAX_SKIPPED_IN_A_ROW = 32


class ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (exit code 2), not the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults after each flag's help (unless the help explains a ``None`` default itself),
    and keep the docstring's line breaks."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def make_parser(doc, parents, epilog=None):
    """A script's parser: its module docstring as description, defaults shown in ``--help``."""
    return ArgumentParser(description=doc, epilog=epilog, formatter_class=HelpFormatter, parents=parents)


def bars_disabled(progress):
    """tqdm's ``disable`` for a ``--progress`` value: off for False, on for True, and for None (the
    flags' default) tqdm's own choice: bars only where its output is a terminal, so a log file
    gets no frames."""
    return None if progress is None else not progress


def check_positive(args, *names):
    """Raise a one-line error for the first flag among ``names`` that is not > 0."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive (got {value})")


def check_non_negative(args, *names):
    """Raise a one-line error for the first flag among ``names`` that is below 0."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise UserError(f"--{name.replace('_', '-')} must be non-negative (got {value})")


def float_list(text):
    """A flag's comma-separated numbers (``0.75,1,1.25``) as a list of floats. One word rather than
    ``nargs="+"``, which would take the positional arguments after it as more numbers."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
