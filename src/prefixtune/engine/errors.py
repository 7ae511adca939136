"""The exception a user of prefixtune sees for their own mistakes, and the one case of it whose fix
depends on where it was met (Python, the command line, the server)."""

from __future__ import annotations


class PrefixTuneError(Exception):
    """A problem with the user's input: the message names the problem and how to fix it.

    The CLI prints it without a traceback and exits non-zero.
    """


class WeightsMismatch(PrefixTuneError):
    """A prefix saved on one base model's weights is being loaded onto different weights.

    The message ends with the fix for the Python API; the command line and the server, where other
    means apply (a flag, a request field), swap in their own with `with_fix`.
    """

    API_FIX = "load that base model, or pass check_weights=False to apply it anyway"

    def __init__(self, problem: str, fix: str = API_FIX) -> None:
        self.problem = problem
        super().__init__(f"{problem}; {fix}")

    def with_fix(self, fix: str) -> WeightsMismatch:
        return WeightsMismatch(self.problem, fix)
