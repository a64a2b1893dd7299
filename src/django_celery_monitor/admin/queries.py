"""The bounded queries of the lists, filters and search: each is served by an index.

Distinct values by a loose index scan, prefixes an index serves, the words of a search, and
counts that stop at a cap.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import EmptyResultSet, FieldError
from django.db import connections, models
from django.db.models.expressions import RawSQL
from django.utils.text import smart_split, unescape_string_literal

from ..managers import values_present


def states_present(queryset: models.QuerySet, limit: int) -> list[str]:
    """The distinct states of the table of ``queryset``, at most ``limit`` of them."""
    return values_present(queryset, "state", limit)


def _after_prefix(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``.

    None when there is none (the prefix is made of the last code point only).
    """
    while prefix:
        following = ord(prefix[-1]) + 1
        if 0xD800 <= following <= 0xDFFF:  # surrogates are no characters of UTF-8
            following = 0xE000
        if following <= sys.maxunicode:
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


def prefix_q(field: str, prefix: str, vendor: str) -> models.Q:
    """The rows whose ``field`` starts with ``prefix``, in a form an index on it serves.

    PostgreSQL: ``LIKE 'prefix%'``, served by the ``varchar_pattern_ops`` index Django adds
    to unique and indexed character columns. SQLite: a range, ``field >= prefix AND field <
    prefix_next``, which its default (binary) collation makes an exact, case-sensitive
    prefix match (its ``LIKE`` ignores ASCII case, and then uses no index). Others (MySQL,
    MariaDB): their ``LIKE``, which their indexes serve, with their collation's case rules.
    """
    if vendor == "postgresql":
        return models.Q(**{f"{field}__startswith": prefix})
    if vendor == "sqlite":
        q = models.Q(**{f"{field}__gte": prefix})
        following = _after_prefix(prefix)
        if following is not None:
            q &= models.Q(**{f"{field}__lt": following})
        return q
    return models.Q(**{f"{field}__istartswith": prefix})


def hostnames_starting(workers: models.QuerySet, term: str, limit: int) -> list[int] | None:
    """The keys of the workers whose hostname starts with ``term``, whatever the case.

    Compared here, not by the database, whose comparison of hostnames may heed the case (on
    MySQL and MariaDB they are compared byte for byte). None when there are more than
    ``limit`` workers to compare.
    """
    rows = list(workers.order_by().values_list("pk", "hostname")[: limit + 1])
    if len(rows) > limit:
        return None
    folded = term.casefold()
    return [pk for pk, hostname in rows if hostname.casefold().startswith(folded)]


#: The most words a search takes: each is looked up (in several indexes) and adds a
#: condition to the list's query, whose depth SQLite bounds (about a thousand).
MAX_SEARCH_WORDS = 20


class TooManyWords(IncorrectLookupParameters, ValueError):
    """A search of more than :data:`MAX_SEARCH_WORDS` words."""


def search_terms(search_term: str) -> list[str]:
    """The words of a search, quoted phrases kept whole (as Django's admin splits them).

    Raises :class:`TooManyWords` past :data:`MAX_SEARCH_WORDS` words (the admin answers
    ``?e=1``, the API 400).
    """
    terms = []
    for bit in smart_split(search_term):
        if bit.startswith(('"', "'")) and bit[0] == bit[-1]:
            bit = unescape_string_literal(bit)
        if bit:
            terms.append(bit)
            if len(terms) > MAX_SEARCH_WORDS:
                raise TooManyWords(f"A search takes at most {MAX_SEARCH_WORDS} words.")
    return terms


def capped_counts(
    queryset: models.QuerySet, field: str, values: Sequence[str], cap: int
) -> dict[str, int]:
    """How many rows of ``queryset`` have each of ``values`` in ``field``, up to ``cap + 1``.

    One statement of one capped subquery per value (``SELECT COUNT(*) FROM (... WHERE
    field = value LIMIT cap + 1)``): each reads at most ``cap + 1`` entries of the index on
    ``field`` whatever the size of the table, where one ``GROUP BY`` would read every row
    the other filters let through.
    """
    counts = dict.fromkeys(values, 0)
    db = queryset.db
    base = queryset.order_by().values_list("pk")
    counted, parts, params = [], [], []
    for value in values:
        subquery = base.filter(**{field: value})[: cap + 1]
        try:
            sql, subquery_params = subquery.query.get_compiler(using=db).as_sql()
        except EmptyResultSet:  # a filter that matches nothing (queryset.none())
            continue
        parts.append(f"(SELECT COUNT(*) FROM ({sql}) cm_count_{len(parts)})")
        params.extend(subquery_params)
        counted.append(value)
    if parts:
        with connections[db].cursor() as cursor:
            cursor.execute("SELECT " + ", ".join(parts), params)
            counts.update(zip(counted, cursor.fetchone(), strict=True))
    return counts


def few_counts(queryset: models.QuerySet, field: str, most: int) -> dict[str, int] | None:
    """How many rows of ``queryset`` have each value of ``field``, if it has ``most`` rows
    at most; None if it has more.

    One statement, which reads at most ``most + 1`` rows in the list's own order (by the
    index that serves the list's page) and groups them. Counting a few rows (the lost
    tasks, a name and a worker) a value at a time, by the index on ``field``, reads every
    row of each value that the other filters turn down: to find no lost task among a
    million, SQLite read the 900,000 successes.
    """
    if getattr(queryset.query, _BRANCHES, None) is not None:
        return None  # a search of several branches, in order, would sort every row it matches
    db = queryset.db
    rows = queryset.values_list(field)[: most + 1]
    try:
        sql, params = rows.query.get_compiler(using=db).as_sql()
    except EmptyResultSet:
        return {}
    quote = connections[db].ops.quote_name
    column = quote(queryset.model._meta.get_field(field).column)
    with connections[db].cursor() as cursor:
        cursor.execute(f"SELECT {column}, COUNT(*) FROM ({sql}) cm_few GROUP BY {column}", params)
        counts = dict(cursor.fetchall())
    return counts if sum(counts.values()) <= most else None


#: A search whose word matches rows by several indexes (two task names, a name and a worker)
#: is read a branch at a time (see :func:`branch_page`), when it has at most this many
#: branches, and a page reads at most ``MAX_BRANCH_ROWS`` rows of them in all.
MAX_BRANCHES = 16
MAX_BRANCH_ROWS = 10_000
_BRANCHES = "_celery_monitor_branches"


def with_branches(
    searched: models.QuerySet, base: models.QuerySet, branches: Sequence[models.Q]
) -> models.QuerySet:
    """Note on ``searched`` (``base`` filtered by the OR of ``branches``) its branches.

    The note is on the query, which Django copies with each clone (the list orders the rows
    after the search); :func:`branch_page` uses it only while the rows' conditions are still
    the ones it was made for.
    """
    if 1 < len(branches) <= MAX_BRANCHES:
        # The base's query, not the queryset: pickling a queryset would run it.
        setattr(searched.query, _BRANCHES, (searched.query.where, list(branches), base.query))
    return searched


def _plain(query: Any) -> bool:
    """Whether ``query`` is a list's plain query: in its own order, on its own rows, not cut
    already."""
    return bool(query.standard_ordering) and not (
        query.extra_order_by or query.combinator or query.is_sliced or query.distinct
    )


def _union_page(
    queryset: models.QuerySet, parts: Iterable[models.QuerySet], alias: str
) -> models.QuerySet:
    """The rows of ``queryset`` whose key one of ``parts`` (querysets of keys) reads, in one
    statement: the UNION ALL of the parts, each read from its own index. A part that can
    match nothing is left out; with none left, no row."""
    db = queryset.db
    sqls, params = [], []
    for part in parts:
        try:
            sql, part_params = part.query.get_compiler(using=db).as_sql()
        except EmptyResultSet:
            continue
        sqls.append(f"SELECT * FROM ({sql}) {alias}_{len(sqls)}")
        params.extend(part_params)
    if not sqls:
        return queryset.none()
    return queryset.filter(pk__in=RawSQL(" UNION ALL ".join(sqls), params))


def branch_page(queryset: models.QuerySet, bottom: int, top: int) -> models.QuerySet | None:
    """Rows ``bottom`` to ``top`` of a search noted by :func:`with_branches`, or None.

    The first ``top`` rows of the OR of several conditions, each served by an index of its
    own in the list's order (a name's rows by date), are among the first ``top`` rows of
    each condition. The page is taken from those, read a branch at a time, each from its
    index, in the page's own statement: a database given the OR reads and sorts every row
    it matches (90,000 of two names, for a page of 100).
    """
    noted = getattr(queryset.query, _BRANCHES, None)
    if noted is None:
        return None
    where, branches, base_query = noted
    query = queryset.query
    ordering = query.order_by or queryset.model._meta.ordering
    if (
        query.where != where
        or not ordering
        or len(branches) * top > MAX_BRANCH_ROWS
        or not _plain(query)
    ):
        return None
    base = models.QuerySet(queryset.model, query=base_query.chain(), using=queryset.db)
    base = base.order_by(*ordering).values_list("pk")
    # One statement: the page of the rows whose key is among the branches' first rows.
    try:
        rows = _union_page(
            queryset, (base.filter(branch)[:top] for branch in branches), "cm_branch"
        )
    except FieldError:  # an order by something added after the search
        return None
    return rows[bottom:top]


#: A list sorted by a column of few values (the state) is read a value at a time (see
#: :func:`value_page`) when the table has at most this many of them.
MAX_VALUES = 40
#: What may follow that column in the list's order: each value's rows are read in it from
#: the index on (column, time), forwards or backwards.
_VALUE_PAGE_THEN = frozenset({"tstamp", "pk", "id"})


def value_page(
    queryset: models.QuerySet, field: str, bottom: int, top: int
) -> models.QuerySet | None:
    """Rows ``bottom`` to ``top`` of a list sorted by ``field`` first, read a value at a time.

    None unless the list is sorted by ``field`` (either way), then by time and key only.

    The index on (state, time) gives one state's rows by time in both directions, but all
    the rows in one order only: sorted by state descending, then the latest first, a
    database reads and sorts every row of the first state it meets (900,000 rows, 2.4 s on
    SQLite). Here each state's rows are counted up to ``top`` (one statement), which says
    which states the page takes and from which of their rows; each state's part is read
    from its index, and the page is the union of the parts, in one statement.
    """
    query = queryset.query
    ordering = list(query.order_by)
    if not ordering or not isinstance(ordering[0], str) or ordering[0].lstrip("-") != field:
        return None
    if (
        queryset.model._meta.get_field(field).null
        or any(
            not isinstance(part, str) or part.lstrip("-") not in _VALUE_PAGE_THEN
            for part in ordering[1:]
        )
        or not _plain(query)
    ):
        return None
    values = values_present(queryset, field, MAX_VALUES + 1)  # in the database's order
    if len(values) > MAX_VALUES:
        return None
    if ordering[0].startswith("-"):
        values.reverse()
    counts = capped_counts(queryset, field, values, top)
    base = queryset.order_by(*ordering[1:]).values_list("pk")
    parts, seen = [], 0
    for value in values:
        found = counts[value]
        if seen + found > bottom:
            parts.append(base.filter(**{field: value})[max(0, bottom - seen) : top - seen])
        seen += found
        if seen >= top:
            break
    return _union_page(queryset, parts, "cm_value")[: top - bottom]
