"""README.md stays true: its configuration table names real keys with their real defaults, and
its layout section names paths that exist."""

from __future__ import annotations

import re

from _testpaths import REPO
from omegaconf import OmegaConf

README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _norm(value: object) -> str:
    text = str(value).strip('"')
    try:
        return repr(float(text))
    except ValueError:
        return text.replace("'", "").lower()


def test_configuration_table_matches_the_schema():
    from scforge.config import ShardJobConfig

    conf = OmegaConf.structured(ShardJobConfig)
    rows = re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", _section("Configuration reference"),
                      re.M)
    assert len(rows) >= 20
    for key, default in rows:
        value = OmegaConf.select(conf, key, throw_on_missing=True, default="<missing>")
        assert value != "<missing>", f"README names {key}, which ShardJobConfig does not have"
        if OmegaConf.is_list(value):
            value = "[" + ", ".join(map(str, value)) + "]"
        assert _norm(value) == _norm(default), (key, default, value)


def test_layout_section_names_existing_paths():
    block = _section("Layout").split("```")[1]
    parents: list[str] = []
    checked = 0
    for line in block.splitlines():
        m = re.match(r"^( *)([A-Za-z_][\w./]*?)(/?)\s{2,}\S", line + "  x")
        if not m or not m.group(2):
            continue
        depth = len(m.group(1)) // 2
        parents = parents[:depth]
        path = REPO.joinpath(*parents, m.group(2))
        if m.group(3):
            parents.append(m.group(2))
        assert path.exists(), f"README layout names {path.relative_to(REPO)}, which is missing"
        checked += 1
    assert checked >= 20
