"""The one exception type actkit raises for bad input.

A user who passes a wrong site, file or model should read what is wrong and how to fix it, not a stack trace
from deep inside torch. The CLI prints these messages alone and exits with status 2.
"""

from __future__ import annotations


class ActkitError(ValueError):
    """Bad input or an unsupported request; the message names the problem and the fix."""
