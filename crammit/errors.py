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


class Interrupted(Exception):
    """Work the user stopped (Ctrl-C): its message says what finished; the CLI adds how to
    continue and exits with code 130, as a shell does for an interrupted command."""
