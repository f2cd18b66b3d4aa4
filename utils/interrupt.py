"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's pre-emption).

Inside :class:`StopOnSignal` the first signal only raises a flag; the training loop looks at it
after every step, saves ``last.pth`` there and raises :class:`utils.errors.Interrupted`, whose
one-line message shows the resume command. A second signal stops at once, leaving the checkpoints of the last
finished epoch (every checkpoint is written atomically, so even SIGKILL leaves them loadable).
A second signal within ``REPEAT_SECONDS`` of the first counts as the same request: under
``torchrun`` a Ctrl-C reaches each worker twice, from the terminal and forwarded by the launcher.
"""
import signal
import threading
import time

import torch

from utils.distributed import all_reduce_sum

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_SECONDS = 2.0


class StopOnSignal:
    """A context in which SIGINT and SIGTERM ask for a stop instead of killing the process.

    Calling the object tells whether a stop was asked (by any process, when there are several,
    so that all of them stop after the same step).

    Args:
        distributed: several processes run together; they compare notes every ``every``-th call
            (an all-reduce waits for the GPU, so not every step), the same calls on each of them.
        every: see ``distributed``.
    """

    def __init__(self, distributed=False, every=16):
        self.distributed, self.every, self.calls = distributed, every, 0
        self.signum = None
        self._first = None
        self._previous = {}

    def __enter__(self):
        # Handlers can only be installed from the main thread (tests may call main() elsewhere).
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self._first is None:
            self.signum, self._first = signum, now
        elif now - self._first > REPEAT_SECONDS:
            raise KeyboardInterrupt  # a second request: stop now

    @property
    def name(self):
        """The signal's name, for messages (``SIGINT``, ``SIGTERM``)."""
        return signal.Signals(self.signum or signal.SIGTERM).name

    def __call__(self):
        asked = float(self.signum is not None)
        if self.distributed:
            self.calls += 1
            if self.calls % self.every:
                return False
            asked = all_reduce_sum(torch.tensor(asked)).item()
        if asked and self.signum is None:
            self.signum = signal.SIGTERM  # another process was signalled
        return bool(asked)
