"""A stand-in for the training loop's Ctrl-C handler: a first interrupt after a number of steps."""

from __future__ import annotations


class StopAfter:
    """Patched over `prefixtune.train.loop._Interrupt`: `requested` turns True after `steps` checks."""

    def __init__(self, steps: int) -> None:
        self.left, self._requested = steps, False

    @property
    def requested(self) -> bool:
        self.left -= 1
        return self._requested or self.left < 0

    @requested.setter
    def requested(self, value: bool) -> None:
        self._requested = value

    def restore(self) -> None:
        pass
