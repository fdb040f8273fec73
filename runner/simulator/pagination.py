"""Cursor pagination of every list endpoint (wire-protocol §4): limit, order, after, before.

Items come in creation order, which is also the tie order for equal `created_at` seconds, so
cursors stay deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from runner.simulator.http import Call, bad_request

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def page(
    call: Call,
    items: Sequence[T],
    ident: Callable[[T], str],
    render: Callable[[T], dict[str, Any]],
    default_order: str = "desc",
) -> dict[str, Any]:
    """One page of `items` as OpenAI's list envelope; empty pages carry null first/last ids."""
    raw_limit = call.query("limit")
    try:
        limit = DEFAULT_LIMIT if raw_limit is None else int(raw_limit)
    except ValueError:
        raise bad_request(
            f"Invalid 'limit': expected an integer, but got '{raw_limit}' instead.", "limit"
        ) from None
    if limit < 1:
        raise bad_request(
            f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but got {limit} instead.",
            "limit",
            "integer_below_min_value",
        )
    if limit > MAX_LIMIT:
        raise bad_request(
            f"Invalid 'limit': integer above maximum value. Expected a value <= {MAX_LIMIT}, "
            f"but got {limit} instead.",
            "limit",
            "integer_above_max_value",
        )
    order = call.query("order") or default_order
    if order not in ("asc", "desc"):
        raise bad_request(
            f"Invalid value for 'order': expected one of 'asc' or 'desc', got '{order}'.", "order"
        )
    seq = list(items) if order == "asc" else list(reversed(items))
    ids = [ident(x) for x in seq]
    after, before = call.query("after"), call.query("before")
    lo, hi = 0, len(seq)
    if after:
        if after not in ids:
            raise bad_request(f"Invalid 'after': no object with id '{after}' in this list.", "after")
        lo = ids.index(after) + 1
    if before:
        if before not in ids:
            raise bad_request(f"Invalid 'before': no object with id '{before}' in this list.", "before")
        hi = ids.index(before)
    window = seq[lo:hi]
    if before and not after:  # the page just before the cursor
        chosen = window[-limit:]
        has_more = len(window) > limit
    else:
        chosen = window[:limit]
        has_more = len(window) > limit
    data = [render(x) for x in chosen]
    return {
        "object": "list",
        "data": data,
        "first_id": ident(chosen[0]) if chosen else None,
        "last_id": ident(chosen[-1]) if chosen else None,
        "has_more": has_more,
    }
