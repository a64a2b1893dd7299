"""Keep chosen arguments and results out of the database.

Applied by the camera to every task row before it is kept or written: the fields named for
every task (``monitor_redact_fields``) or for a task name or pattern
(``monitor_redact_tasks``) are replaced by :data:`MARKER`, then the hook
(``monitor_redact_hook``) sees each text field that is left. A task whose name the camera
has not seen (it started before the camera) is redacted as if it matched every pattern:
when in doubt, nothing is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from fnmatch import fnmatchcase
from typing import Any

from .conf import REDACTABLE_FIELDS, MonitorSettings

__all__ = ["MARKER", "Redactor"]

logger = logging.getLogger(__name__)

#: What a redacted field holds.
MARKER = "[redacted]"


class Redactor:
    """The redaction rules, read from the settings once (per snapshot)."""

    def __init__(
        self,
        fields: tuple[str, ...] = (),
        tasks: Mapping[str, tuple[str, ...]] | None = None,
        hook: Callable[[str | None, str, str], Any] | None = None,
    ) -> None:
        self.fields = frozenset(fields)
        self.tasks = dict(tasks or {})
        self.hook = hook
        self._unnamed = self.fields.union(*self.tasks.values())
        self._by_name: dict[str, frozenset[str]] = {}

    @classmethod
    def from_settings(cls, settings: MonitorSettings) -> Redactor:
        return cls(settings.redact_fields, settings.redact_tasks, settings.redact_hook)

    def __bool__(self) -> bool:
        return bool(self._unnamed or self.hook)

    def fields_of(self, name: str | None) -> frozenset[str]:
        """The fields redacted for a task of this name."""
        if name is None:
            return self._unnamed
        found = self._by_name.get(name)
        if found is None:
            found = self.fields.union(
                *(fields for pattern, fields in self.tasks.items() if fnmatchcase(name, pattern))
            )
            if len(self._by_name) < 10_000:
                self._by_name[name] = found
        return found

    def apply(self, name: str | None, row: MutableMapping[str, Any]) -> None:
        """Redact the text fields of a task row in place."""
        for field in self.fields_of(name):
            if row.get(field) is not None:
                row[field] = MARKER
        if self.hook is None:
            return
        for field in REDACTABLE_FIELDS:
            value = row.get(field)
            if value is None or value == MARKER:
                continue
            try:
                new = self.hook(name, field, value)
            except Exception:
                logger.exception("The redaction hook failed on %s; the field is redacted.", field)
                new = MARKER
            row[field] = None if new is None else str(new)
