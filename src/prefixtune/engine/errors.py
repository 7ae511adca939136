"""The one exception type a user of prefixtune sees for their own mistakes."""


class PrefixTuneError(Exception):
    """A problem with the user's input: the message names the problem and how to fix it.

    The CLI prints it without a traceback and exits non-zero.
    """
