"""docs/config.md is what `edge-agent config reference` writes from the settings models:
a key added, renamed or redescribed without regenerating the file fails here."""

from __future__ import annotations

from edge_agent.config.settings import AgentSettings
from tests.conftest import ROOT, run_cli


def test_docs_config_md_is_current() -> None:
    proc = run_cli("config", "reference")
    assert proc.returncode == 0, proc.stderr
    shipped = (ROOT / "docs" / "config.md").read_text()
    assert proc.stdout == shipped, (
        "docs/config.md is stale: run `.venv/bin/edge-agent config reference > docs/config.md`"
    )


def test_every_section_and_how_it_applies_is_in_the_reference() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    for name in AgentSettings.model_fields:
        heading = f"## `[{name}]`"
        assert heading in text, heading
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        assert (
            "A change applies live" in section
            or "A change restarts" in section
            or ("A change needs a restart" in section)
        ), name
    assert "| `trusted_keys` |" in text and "| `remote_keys` |" in text
