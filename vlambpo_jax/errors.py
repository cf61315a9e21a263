"""The one base class of errors a user causes and can fix.

Bad data, a checkpoint written under another config, a stage run without the outputs it needs: the
commands print the message of a `UserError` as one line on stderr and keep the traceback in the log.
"""
from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's inputs (data, config, workdir); the message alone must say what to fix."""
