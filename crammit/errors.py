"""The one exception type for mistakes a user can make (bad flags, missing files)."""


class CrammitError(Exception):
    """A user-caused error: the CLI prints its message as one line and exits with code 2."""
