"""The one progress printer: stage messages and tables on stdout, silenced by ``verbose=0``."""

import sys
import time


class Progress:
    """Print progress lines with the elapsed time when ``verbose`` is 1 or more."""

    def __init__(self, verbose=1, stream=None):
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.start = time.monotonic()

    def step(self, message):
        if self.verbose:
            elapsed = time.monotonic() - self.start
            print(f"[{elapsed:7.1f}s] {message}", file=self.stream, flush=True)

    def block(self, text):
        if self.verbose:
            print(text, file=self.stream, flush=True)

    @property
    def keras_verbose(self):
        """The ``verbose`` value for ``model.fit``: a progress bar on a terminal, else one line an epoch."""
        if not self.verbose:
            return 0
        return 1 if self.stream.isatty() else 2
