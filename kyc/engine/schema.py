"""The signal schema: every field a rule can read, declared once by the signal code that fills it."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable

TYPES = ("bool", "int", "float", "str")


@dataclass(frozen=True)
class Field:
    name: str                 # "email.disposable": family, dot, field
    type: str                 # one of TYPES
    description: str
    example: Any = None
    source: str = ""          # where the fact comes from (library, data file, list), for docs/signals.md

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"{self.name}: unknown type {self.type!r}")
        if self.name.count(".") != 1:
            raise ValueError(f"{self.name}: a field is named family.field")

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[1]


class Schema:
    """A lookup of declared fields, with suggestions for near misses."""

    def __init__(self, fields: Iterable[Field]):
        self.fields: dict[str, Field] = {}
        for f in fields:
            if f.name in self.fields:
                raise ValueError(f"field {f.name} declared twice")
            self.fields[f.name] = f
        self.families = sorted({f.family for f in self.fields.values()})

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def __getitem__(self, name: str) -> Field:
        return self.fields[name]

    def __iter__(self):
        return iter(sorted(self.fields.values(), key=lambda f: f.name))

    def suggest(self, name: str) -> str | None:
        close = difflib.get_close_matches(name, self.fields.keys(), n=1, cutoff=0.6)
        return close[0] if close else None
