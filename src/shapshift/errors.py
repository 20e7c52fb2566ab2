"""User-facing errors: one readable paragraph that says what went wrong and how to fix it."""

from __future__ import annotations

import textwrap


class ShapshiftError(Exception):
    """An expected failure (bad config, bad data, missing model) with a message that says the fix.

    The CLI prints ``str(error)`` without a traceback and exits with status 2.
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem.strip()
        self.fix = fix.strip() if fix else None
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = self.problem if not self.fix else f"{self.problem} {self.fix}"
        return textwrap.fill(" ".join(text.split()), width=100)


class ConfigError(ShapshiftError):
    """The run configuration is invalid."""


class DataError(ShapshiftError):
    """The dataset cannot be read or lacks what the run needs."""


class ModelError(ShapshiftError):
    """The model cannot be found or loaded, or cannot take the input (longer than its context)."""


class ArtifactError(ShapshiftError):
    """A stored artifact is missing, truncated, edited or from a different configuration."""
