"""The README documents every command (as sqlite-utils' test_docs does), and every command has help text."""

import re
from pathlib import Path

from helpers import commands

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_command_is_in_the_readme_command_table():
    rows = [line for line in README.splitlines() if re.match(r"\| `harness ", line)]
    documented = {re.match(r"\| `harness ([a-z-]+(?: [a-z][a-z-]*)?)", r).group(1) for r in rows}
    missing = [c for c in commands() if c not in documented]
    assert not missing, f"commands missing from the README's command table: {missing}"


def test_every_command_has_help_text():
    assert all(doc and doc.strip() for doc in commands().values())
