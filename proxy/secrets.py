"""Masking passwords out of what the proxy shows: logs, `turnout status`, error messages.

A server store's address may carry a password (`postgresql://app:s3cret@db/app`, a libpq
`password=s3cret`, `redis://:s3cret@cache:6379/0`); a driver's error can quote it back. Whatever
text leaves the process about a store passes through `mask` first.
"""

from __future__ import annotations

import re

MASK = "***"

# userinfo of a URL: scheme://user:password@host (the user part may be empty, as Redis URLs often are).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?=@)")
# libpq key=value form, and query parameters: password=..., quoted or not.
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\b(?:password|passwd|pass)\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&;]*)",
                               re.IGNORECASE)


def mask(text: str, *secrets: str) -> str:
    """The text with every password form above, and each of the given secret strings, replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return _KEYWORD_PASSWORD.sub(lambda m: m["head"] + MASK, text)
