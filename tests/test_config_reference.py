"""docs/config.md is what `edge-agent config reference` writes from the settings models:
a key added, renamed or redescribed without regenerating the file fails here."""

from __future__ import annotations

from pathlib import Path

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


def commented_tables(text: str) -> str:
    """The `# [section]` blocks of a config file, uncommented: what a user gets by
    removing the `# ` in front of them."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("# [") and not line.startswith("# [["):
            inside = True
        elif not line.startswith("# ") or not line[2:3].strip():
            inside = False
        if inside:
            out.append(line[2:].split("  #", 1)[0].rstrip())
    return "\n".join(out) + "\n"


def test_the_shipped_config_shows_every_section(tmp_path: Path) -> None:
    """configs/agent.toml names every section, as a table or as a commented example that
    is valid once uncommented."""
    text = (ROOT / "configs" / "agent.toml").read_text()
    for name in AgentSettings.model_fields:
        assert f"[{name}" in text or f"# [{name}" in text, name
    examples = tmp_path / "examples.toml"
    examples.write_text(commented_tables(text))
    # The [mqtt] example reads its secrets from systemd credentials.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt-password").write_text("secret\n")
    (credentials / "tls-key").write_text("-----BEGIN PRIVATE KEY-----\n")
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    proc = run_cli("config", "validate", str(examples), env=env)
    assert proc.returncode == 0, proc.stderr + examples.read_text()
