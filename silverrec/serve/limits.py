"""The documented limits of one ``silverrec-serve`` request, in one place.

Each limit is checked before the work it bounds: the body size before the body is read in full
(from ``Content-Length``, and again while a body without one streams in), the user count, the
history and exclusion lengths and the filter's characters before anything is encoded, and the
filter's program length while it is lexed (:mod:`silverrec.retrieval.filter_expr`). Two more
limits come from elsewhere: the filter program length is the artifact's ``filter.length``
(``serving.filter_length`` at export), and nesting of parentheses and ``NOT`` is at most
:data:`silverrec.retrieval.filter_expr.MAX_DEPTH` levels.

Example::

    >>> ServingLimits(max_users=64).max_users
    64
    >>> ServingLimits(max_users=0)
    Traceback (most recent call last):
    ...
    ValueError: ServingLimits.max_users must be a positive integer, got 0
"""
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ServingLimits:
    """Per-request limits of the HTTP service (a request over one gets a 400 or 413 naming it).

    Args:
        max_body_bytes (int): most bytes of a request body (413 above).
        max_users (int): most users in one ``/query`` request (400 above).
        max_history (int): most item ids in one user's ``history`` (400 above; the towers read
            only the latest ``history_length`` of them).
        max_exclude (int): most item ids in one user's ``exclude`` list (400 above).
        max_filter_chars (int): most characters of one filter expression (400 above).
    """

    max_body_bytes: int = 2 * 1024 * 1024
    max_users: int = 1024
    max_history: int = 1000
    max_exclude: int = 10_000
    max_filter_chars: int = 2048

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServingLimits.{f.name} must be a positive integer, got {value!r}")
