"""The YAML presets shipped with spo (`src/spo/configs/`) and how a preset name is found.

Its own module (not `spo.cli`) so that library code (`spo.train.sft` resolving
`sft:<preset>` model names, `spo.commands.bench`) can resolve presets without importing the
command line, which imports the trainer.
"""

from __future__ import annotations

from pathlib import Path

from spo.config import ConfigError

PRESETS_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "demo"


def resolve_preset(name: str) -> Path:
    """A path to a YAML file, or the name of a preset shipped with spo (`demo`, `smoke`, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = PRESETS_DIR / (name if name.endswith(".yaml") else name + ".yaml")
    if shipped.is_file():
        return shipped
    shipped = PRESETS_DIR / path.name
    if path.parent.name == "configs" and shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
    raise ConfigError(f"config file not found: {name} (shipped presets: {known})")
