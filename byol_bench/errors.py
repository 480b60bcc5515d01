"""The one exception type that reaches the user as a single line and exit code 2."""

import difflib


class UserError(Exception):
    """A bad input: the message names the input and says how to fix it."""


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: str, choices) -> UserError:
    """The error for a name that is not in a registry."""
    return UserError(
        f"unknown {kind} '{name}'{did_you_mean(name, choices)}; choose one of: {', '.join(sorted(choices))}"
    )
