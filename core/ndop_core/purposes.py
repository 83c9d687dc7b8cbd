"""The purposes a check may declare: recorded in the audit log and the receipt, never guessed.

research and planning are what the national data opt-out applies to; the others are the
legal bases under which it does not apply but an organisation still chooses to check.
"""

from __future__ import annotations

from typing import Final

PURPOSES: Final = (
    "research",
    "planning",
    "consent",
    "legal-requirement",
    "overriding-public-interest",
)
