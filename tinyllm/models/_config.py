"""What every model config dataclass shares: a plain dict for checkpoint metadata and back."""
from __future__ import annotations

from dataclasses import MISSING, asdict, fields


class ConfigDict:
    """Mixin for a config dataclass: ``to_dict()`` and ``from_dict(d)``, which names unknown
    fields and the missing required ones (those without a default)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        fs = fields(cls)
        unknown = sorted(set(d) - {f.name for f in fs})
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown fields {', '.join(unknown)}")
        missing = [f.name for f in fs if f.name not in d and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"{cls.__name__}.from_dict: missing fields {', '.join(missing)}")
        return cls(**d)
