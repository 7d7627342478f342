"""Poison isolation: a batch of user data that fails is cut in halves until the records that fail
on their own are found; those are accounted for (a drop reason in prepare, an error row in
translate) and every other record is processed as usual.

Why bisect rather than process record by record: the per-batch functions are vectorised (Arrow
kernels, a tokenizer call per batch, decoding in padded batches), so the fast path stays one call;
a batch with k bad records costs about ``2 k log2(n)`` extra calls, and only when it fails.

Failures that are not about a record are raised, never bisected: storage and network
(``OSError``), memory; and, after bisecting, a failure that every record of a batch of at least
``SYSTEMIC`` records shows alone: the code fails whatever the data (a bug, a broken model). A
smaller batch whose records all fail is taken as poison: a nightly job must not crash again on
every rerun because one small file holds nothing but bad records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import pyarrow as pa

__all__ = ["NOT_ABOUT_A_RECORD", "SYSTEMIC", "isolate", "isolate_rows", "describe"]

T = TypeVar("T")
R = TypeVar("R")
# Raised at once: storage, network and memory say nothing about the record being processed.
NOT_ABOUT_A_RECORD = (OSError, MemoryError, KeyboardInterrupt, SystemExit)
SYSTEMIC = 16


def describe(err: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def isolate(
    fn: Callable[[list[T]], list[R]],
    records: Sequence[T],
    on_poison: Callable[[T, BaseException], R],
) -> list[R]:
    """``fn(records)``, one result per record; a record on which ``fn`` fails alone gets
    ``on_poison(record, error)`` instead.

    Raises:
        NOT_ABOUT_A_RECORD errors from ``fn`` as they come; the first error when every record of
        a batch of ``SYSTEMIC`` or more fails alone.
    """
    records = list(records)
    failures: list[BaseException] = []
    results = _bisect(fn, records, failures)
    if len(records) >= SYSTEMIC and len(failures) == len(records):
        raise failures[0]  # every record fails alone: the code, not the data
    return [
        out if error is None else on_poison(record, error)
        for record, (out, error) in zip(records, results)
    ]


def _bisect(fn, records: list, failures: list) -> list[tuple[object, BaseException | None]]:
    """(result, None) per record, or (None, error) for a record that fails alone."""
    try:
        return [(out, None) for out in fn(records)]
    except NOT_ABOUT_A_RECORD:
        raise
    except Exception as err:
        if len(records) == 1:
            failures.append(err)
            return [(None, err)]
        middle = len(records) // 2
        return _bisect(fn, records[:middle], failures) + _bisect(fn, records[middle:], failures)


def isolate_rows(
    fn: Callable[[pa.Table], pa.Table],
    table: pa.Table,
    on_poison: Callable[[pa.Table, BaseException], pa.Table],
) -> pa.Table:
    """``fn(table)`` for a row-preserving ``fn`` (one output row per input row, in order); a row
    on which ``fn`` fails alone is passed through ``on_poison(row, error)`` instead, a one-row
    table that ``fn`` accepts (e.g. the row marked dropped), and then through ``fn``.

    Raises:
        as :func:`isolate`.
    """
    if table.num_rows == 0:
        return fn(table)

    def apply(rows: list[pa.Table]) -> list[pa.Table]:
        out = fn(pa.concat_tables(rows) if len(rows) > 1 else rows[0])
        return [out.slice(i, 1) for i in range(out.num_rows)]

    def fallback(row: pa.Table, err: BaseException) -> pa.Table:
        return fn(on_poison(row, err))

    try:  # the common case: one call
        return fn(table)
    except NOT_ABOUT_A_RECORD:
        raise
    except Exception:
        rows = [table.slice(i, 1) for i in range(table.num_rows)]
        return pa.concat_tables(isolate(apply, rows, fallback))
