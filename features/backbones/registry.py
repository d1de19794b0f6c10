"""The catalogue: every entry by name, the look-up with its error, and ``--input-size`` parsing."""

from __future__ import annotations

from features.backbones import hub, keras_apps

REGISTRY: dict = {s.name: s for s in [*keras_apps.ENTRIES, *hub.ENTRIES]}
ALIASES = {**keras_apps.ALIASES, **hub.ALIASES}


def get(name: str):
    """Look a backbone up by name (case-insensitive), with a clear error listing the choices."""
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def parse_input_size(text: str | int | None, spec) -> tuple[int, int]:
    """Parse ``--input-size`` ("N" or "HxW"); None gives the backbone's default."""
    if text is None or text == "":
        return spec.input_size
    if isinstance(text, int):
        h = w = text
    else:
        parts = str(text).lower().replace("×", "x").split("x")
        try:
            if len(parts) == 1:
                h = w = int(parts[0])
            elif len(parts) == 2:
                h, w = int(parts[0]), int(parts[1])
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"--input-size must be N or HxW, got {text!r}") from None
    spec.check_size(h, w)
    return (h, w)


def describe() -> list[dict]:
    """The registry as plain dicts (for ``bneck backbones --json``)."""
    return [s.describe() for s in REGISTRY.values()]
