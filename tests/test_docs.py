"""The README documents every configuration key, generated from where each is declared."""

from __future__ import annotations

from pathlib import Path

from gateway.config import GatewaySettings, documented_keys
from gateway.config_docs import END, START, reference

README = Path(__file__).parent.parent / "README.md"


def test_readme_reference_is_up_to_date() -> None:
    text = README.read_text()
    current = text[text.index(START):text.index(END) + len(END)]
    assert current == reference(), "README.md is out of date: run `make docs`"


def test_every_key_is_in_the_readme() -> None:
    text = README.read_text()
    missing = [key for key, _ in documented_keys(GatewaySettings) if f"`{key}`" not in text]
    assert missing == []


def test_every_key_has_help() -> None:
    keys = documented_keys(GatewaySettings)
    assert [key for key, help_text in keys if not help_text.strip()] == []


def test_readme_opens_with_the_two_commands() -> None:
    opening = "\n".join(README.read_text().splitlines()[:15])
    assert "make demo" in opening
    assert "make test" in opening
