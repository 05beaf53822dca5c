"""Keep third-party import-time noise out of what ``deepseek compress`` shows the user.

torchao logs a warning per optional kernel library it cannot load ("Failed to load .../_C_mxfp8...so")
and, on import, triggers torch's deprecation warning about ``register_constant`` on Enum subclasses.
Neither says anything about the user's run, so both go to the ``deepseek.compress`` logger at DEBUG
(``logging.getLogger("deepseek.compress").setLevel(logging.DEBUG)`` to see them); every other record
of those loggers passes unchanged.
"""

from __future__ import annotations

import logging

log = logging.getLogger("deepseek.compress")

# (logger, text in the unformatted message) of the records demoted to DEBUG
NOISE: tuple[tuple[str, str], ...] = (
    ("torchao", "Failed to load "),
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported"),
)


class DemoteToDebug(logging.Filter):
    """Drops a record whose message contains ``text`` from its logger and logs it at DEBUG on ``log``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in str(record.msg):
            return True
        log.debug("%s: %s", record.name, record.getMessage())
        return False


def quiet_third_party_noise() -> None:
    """Install the filters (once; importing :mod:`deepseek.compress` does it, before torchao loads)."""
    for name, text in NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DemoteToDebug) and f.text == text for f in logger.filters):
            logger.addFilter(DemoteToDebug(text))
