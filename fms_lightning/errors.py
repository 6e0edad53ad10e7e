"""The library's error hierarchy.

Every error raised on purpose by ``fms_lightning`` derives from :class:`FMSError`,
so ``except FMSError`` catches all of them. Each subclass also inherits the
builtin exception a Python user would expect (``ValueError``, ``KeyError``, ...),
so code written against builtins keeps working.

A message says what was received, what was expected, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "FMSError",
    "ConfigurationError",
    "UnknownPresetError",
    "MissingMetricError",
    "SearchSpaceError",
    "GraphConstructionError",
    "IncompatibleWeightsError",
    "SurrogateError",
    "StudyError",
    "StudyLockedError",
    "HubError",
    "UnknownHubError",
    "TrialFailedError",
    "BuildError",
]


class FMSError(Exception):
    """Base class of every error raised by fms_lightning."""


class ConfigurationError(FMSError, ValueError):
    """An argument or configuration value is invalid."""


class UnknownPresetError(FMSError, KeyError):
    """A preset (or registry entry) was looked up by a name or rank that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the whole message otherwise
        return str(self.args[0]) if self.args else ""


class MissingMetricError(ConfigurationError):
    """A metric that should be monitored was never logged."""


class SearchSpaceError(ConfigurationError):
    """A search-space dimension is malformed, or a config does not fit the space."""


class GraphConstructionError(FMSError, ValueError):
    """A module could not be turned into a parameter graph."""


class IncompatibleWeightsError(FMSError, ValueError):
    """Weights do not match the layout an encoder or model expects."""


class SurrogateError(FMSError, RuntimeError):
    """The surrogate model failed in a way that could not be recovered."""


class StudyError(FMSError, RuntimeError):
    """The study store is missing, corrupt, or used in an unsupported way."""


class StudyLockedError(StudyError):
    """Another process holds the study's single-writer lock."""


class HubError(FMSError, ValueError):
    """A model-hub entry is missing, corrupt, or unsafe."""


class TrialFailedError(FMSError, RuntimeError):
    """A trial raised during training; the reason is kept in the study."""


class UnknownHubError(HubError, KeyError):
    """A model hub was asked for an entry name it does not have (the message lists the valid ones)."""

    def __str__(self) -> str:  # KeyError would quote the whole message otherwise
        return str(self.args[0]) if self.args else ""


class BuildError(ConfigurationError):
    """The user's ``build(config, hub_entry)`` broke its contract: no trial can succeed, so the study stops."""
