"""Indexes the models declare beyond Django's own (migrations refer to them by this path)."""

from __future__ import annotations

from typing import Any

from django.db import models


class PartialIndex(models.Index):
    """An index of the rows that match ``where`` only, where the database can make one.

    PostgreSQL and SQLite index those rows alone, on ``fields``, so the writes of every
    other row skip it. MySQL and MariaDB cannot: there it indexes every row, on
    ``whole_fields`` when given (the columns of ``where`` first, so that it finds the rows
    of the condition), else on ``fields``. A Django index with a ``condition`` would be made
    whole there too, on the same fields, with a warning on every check.
    """

    def __init__(
        self,
        *args: Any,
        where: models.Q,
        whole_fields: list[str] | tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        if not isinstance(where, models.Q):
            raise TypeError("PartialIndex.where must be a Q instance.")
        super().__init__(*args, **kwargs)
        self.where = where
        self.whole_fields = list(whole_fields)

    def deconstruct(self) -> tuple[str, tuple, dict[str, Any]]:
        path, args, kwargs = super().deconstruct()
        kwargs["where"] = self.where
        if self.whole_fields:
            kwargs["whole_fields"] = self.whole_fields
        return path, args, kwargs

    def create_sql(self, model: Any, schema_editor: Any, using: str = "", **kwargs: Any) -> Any:
        _path, args, options = super().deconstruct()
        if schema_editor.connection.features.supports_partial_indexes:
            options["condition"] = self.where
        elif self.whole_fields:
            options["fields"] = self.whole_fields
        index = models.Index(*args, **options)
        return index.create_sql(model, schema_editor, using=using, **kwargs)


def unnamed_field_indexes(
    schema_editor: Any, model: Any, column: str, but: tuple[str, ...] = ()
) -> list[str]:
    """The names of the plain indexes of ``column`` alone that no ``Meta.indexes`` declares:
    those Django made for a field's ``db_index`` (migrations drop them by these names).
    Names ending with one of ``but`` are left out."""
    declared = {index.name for index in model._meta.indexes}
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, model._meta.db_table)
    return [
        name
        for name, info in constraints.items()
        if info["index"]
        and not info["unique"]
        and not info["primary_key"]
        and info["columns"] == [column]
        and name not in declared
        and not name.endswith(but)
    ]


def drop_field_index(
    schema_editor: Any, model: Any, field_name: str, but: tuple[str, ...] = ()
) -> None:
    """Drop the index Django made for a field's ``db_index``, by itself: a migration that
    changed the field would copy the whole table on SQLite. See :func:`unnamed_field_indexes`
    for ``but``."""
    column = model._meta.get_field(field_name).column
    for name in unnamed_field_indexes(schema_editor, model, column, but):
        schema_editor.remove_index(model, models.Index(fields=[field_name], name=name))


def restore_field_index(
    schema_editor: Any, model: Any, field_name: str, but: tuple[str, ...] = ()
) -> None:
    """Make the index of a field's ``db_index`` again, unless it is there: the way back of
    :func:`drop_field_index`."""
    field = model._meta.get_field(field_name)
    if not unnamed_field_indexes(schema_editor, model, field.column, but):
        schema_editor.execute(schema_editor._create_index_sql(model, fields=[field]))


def exact_text_columns(schema_editor: Any, columns: tuple[tuple[str, str, int], ...]) -> None:
    """On MySQL and MariaDB, make ``(table, column, length)`` text columns compare byte for
    byte; elsewhere, nothing.

    Their default collations ignore case, accents and trailing spaces, so a unique key took
    ``abc``, ``ABC`` and ``abc `` (three values to Celery) for one. A binary collation
    that does not pad takes them apart, as PostgreSQL and SQLite do. (A later migration
    that alters such a field makes it the table's collation again: it must call this too.)
    """
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    quote = connection.ops.quote_name
    if connection.mysql_is_mariadb:
        collation = "utf8mb4_nopad_bin"
    elif connection.mysql_version >= (8, 0, 17):  # its binary collation from 8.0.17 on
        collation = "utf8mb4_0900_bin"
    else:
        collation = "utf8mb4_bin"
    for table, column, length in columns:
        schema_editor.execute(
            f"ALTER TABLE {quote(table)} MODIFY {quote(column)} varchar({length}) "
            f"CHARACTER SET utf8mb4 COLLATE {collation} NOT NULL"
        )
