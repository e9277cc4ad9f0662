"""README.md's config table and ARCHITECTURE.md's module map stay true against the code: every config
key is documented, every module is on the map, and neither names something that does not exist.

On failure the message lists exactly what is missing or stale, so the docs can be fixed from it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from longdraft.config import Config

ROOT = Path(__file__).resolve().parents[2]


def _section(text: str, heading: str) -> str:
    """The lines of a ``## heading`` section, up to the next ``## ``."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def schema_keys(section=None, prefix: str = "") -> set[str]:
    section = Config() if section is None else section
    keys: set[str] = set()
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            keys |= schema_keys(value, f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


def documented_keys(readme: str) -> set[str]:
    """Keys of the config table: a row's first cell lists `section.key` and then, in the same
    section, `other_key`s (e.g. "`training.lr`, `warmup_steps`, `min_lr`")."""
    keys: set[str] = set()
    for line in _section(readme, "Config reference").splitlines():
        if not line.startswith("| `"):
            continue
        names = re.findall(r"`([^`]+)`", line.split("|")[1])
        section = names[0].rsplit(".", 1)[0]
        keys |= {name if "." in name else f"{section}.{name}" for name in names}
    return keys


def mapped_modules(architecture: str) -> set[str]:
    """Files the module map names: an entry is ``  name.py`` or ``  folder/`` at two spaces, its
    text runs on over deeper-indented lines, and every ``x.py`` in a folder's text is ``folder/x.py``."""
    block = _section(architecture, "Module map").split("```")[1]
    files: set[str] = set()
    folder = None
    for line in block.splitlines():
        entry = re.match(r"^  (\S+)", line)
        if entry:
            name = entry.group(1)
            folder = name if name.endswith("/") else ""
            if name.endswith(".py"):
                files.add(name)
            text = line[entry.end() :]
        elif folder is None:
            continue
        else:
            text = line
        if folder:
            files |= {folder + name for name in re.findall(r"\b([a-z_0-9]+\.py)\b", text)}
    return files


def package_modules() -> set[str]:
    package = ROOT / "longdraft"
    return {str(p.relative_to(package)) for p in package.rglob("*.py") if p.name != "__init__.py"}


def test_every_config_key_is_in_the_readme_table():
    documented = documented_keys((ROOT / "README.md").read_text())
    keys = schema_keys()
    missing, stale = sorted(keys - documented), sorted(documented - keys)
    assert not missing and not stale, (
        f"README.md config table: missing keys {missing}; keys that are not in the schema {stale}"
    )


def test_every_module_is_on_the_architecture_map():
    mapped = mapped_modules((ROOT / "ARCHITECTURE.md").read_text())
    modules = package_modules()
    missing, stale = sorted(modules - mapped), sorted(mapped - modules)
    assert not missing and not stale, (
        f"ARCHITECTURE.md module map: modules not on it {missing}; named but not in longdraft/ {stale}"
    )
