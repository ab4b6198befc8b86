"""The one exception type for failures a user can cause.

Library code raises `LdnsError(message, hint)`; the CLI turns it into two lines on stderr
(`error: ...` and `hint: ...`) and exit code 1, never a traceback.
"""

from __future__ import annotations


class LdnsError(Exception):
    """An expected failure caused by input, files or models, with a hint on how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        # one line each: multi-line messages break `error:` grepping in pipelines
        self.message = " ".join(str(message).split())
        self.hint = " ".join(str(hint).split())

    def __str__(self) -> str:
        return self.message
