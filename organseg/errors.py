"""Errors that organseg raises on purpose.

Every error a user can cause (a wrong file, a bad config, a foreign checkpoint) is an
``OrgansegError`` whose message names the file and the problem in one line. The CLI prints
``organseg: error: <message>`` and exits non-zero; anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class OrgansegError(Exception):
    """Base class for errors caused by the user's input, config or environment."""

    exit_code = 1


class InputError(OrgansegError):
    """An input file or folder is missing, unreadable, or not what the command expects."""

    exit_code = 2


class ConfigError(OrgansegError):
    """A configuration file or option is invalid; the message names the key."""

    exit_code = 3


class ModelError(OrgansegError):
    """A checkpoint or model is missing, corrupt, unsafe or made for another task."""

    exit_code = 4


class OutputError(OrgansegError):
    """An output cannot be written (missing or read-only folder, existing file without --overwrite)."""

    exit_code = 5
