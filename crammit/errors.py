"""The exceptions for mistakes a user can make (bad flags, missing files), and the one for
work the user stopped."""

from __future__ import annotations


class CrammitError(Exception):
    """A user-caused error: the CLI prints its message as one line and exits with code 2."""


class ConfigError(CrammitError):
    """A config field holds a value it may not: `field` names it, `problem` says what is
    wrong without naming it ("must be positive"), so the command line can name the flag
    the value came from instead (`--lr must be ...` rather than `peak_lr must be ...`)."""

    def __init__(self, field: str, problem: str, value: object, subject: str = "", where: str = "") -> None:
        self.field, self.problem, self.value, self.subject = field, problem, value, subject
        super().__init__(f"{where + ': ' if where else ''}{subject or field} {problem}, got {value}")

    def within(self, where: str) -> ConfigError:
        """The same error, said of the part of something larger it is in (a study's setting)."""
        return ConfigError(self.field, self.problem, self.value, self.subject, where)


def one_line(error: BaseException) -> str:
    """Why some work failed, in the one line its record keeps: the exception's type and the
    first line of its message. An error raised in a Ray task or Tune trial arrives wrapped in
    Ray's report of it: the original, its cause, is the one said."""
    cause = getattr(error, "cause", None) or error
    return f"{type(cause).__name__}: {cause}".splitlines()[0]


class Interrupted(Exception):
    """Work the user stopped (Ctrl-C): its message says what finished; the CLI adds how to
    continue and exits with code 130, as a shell does for an interrupted command."""
