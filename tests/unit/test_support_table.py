"""README.md's support table is the one generated from the families' declarations, which the family
tests assert (HF columns: tests/e2e/test_families.py; vLLM columns: tests/vllm), so every row is backed."""

from pathlib import Path

from longdraft.testing.families import COLUMNS, FAMILIES, PASS, support_table_markdown

ROOT = Path(__file__).resolve().parents[2]


def readme_support_table() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Supported targets\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))


def test_readme_support_table_is_the_generated_one():
    assert readme_support_table() == support_table_markdown(), (
        "README.md '## Supported targets' is stale: replace its table with the output of "
        "`python -m longdraft.testing.families --markdown`"
    )


def test_every_family_declares_pass_or_a_reason_in_every_column():
    assert len(FAMILIES) == 12
    for family in FAMILIES.values():
        for column in COLUMNS:
            status = family.status(column)
            assert status == PASS or (isinstance(status, str) and len(status) > 10), (family.name, column, status)
