"""The exception for mistakes a user can make (bad flags, missing files), and the one for
work the user stopped."""


class CrammitError(Exception):
    """A user-caused error: the CLI prints its message as one line and exits with code 2."""


class Interrupted(Exception):
    """Work the user stopped (Ctrl-C): the CLI prints what finished and how to continue, and
    exits with code 130, as a shell does for an interrupted command."""
