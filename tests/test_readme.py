"""The README is the front page: short, and every code block in it runs as it is copied."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def test_the_readme_is_a_short_front_page() -> None:
    assert len(README.splitlines()) <= 150
    commands = re.findall(r"^```bash\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)
    assert commands[:2] == [
        "pip install -e '.[dev]' && python examples/order_saga.py\n",
        "pip install -e '.[dev]' && pytest\n",
    ]


def test_the_readme_example_is_the_quickstart_file() -> None:
    quickstart = (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8")
    assert BLOCKS and BLOCKS[0] in quickstart


@pytest.mark.parametrize("block", range(len(BLOCKS)))
def test_every_python_block_of_the_readme_runs(block: int, tmp_path: Path) -> None:
    script = tmp_path / f"readme_{block}.py"
    script.write_text(BLOCKS[block], encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_every_documentation_page_is_linked_from_the_readme() -> None:
    pages = {path.name for path in (ROOT / "docs").glob("*.md")} - {"changelog.md"}
    linked = set(re.findall(r"\(docs/([\w-]+\.md)\)", README))
    assert pages <= linked
