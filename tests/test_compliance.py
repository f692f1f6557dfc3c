"""The compliance matrix generator (scripts/compliance.py) on a small tree of its own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("compliance", ROOT / "scripts/compliance.py")
assert _spec and _spec.loader
compliance = importlib.util.module_from_spec(_spec)
sys.modules["compliance"] = compliance
_spec.loader.exec_module(compliance)

DOMAIN = """# Domain
| id | § | clause | kind |
| --- | --- | --- | --- |
| C-1 | 1 | contact people | support |
| C-2 | 2-3 | own residents only | software |
| C-3 | 3 | only the three services | software |
"""


def tree(tmp_path: Path, polar: str, test: str) -> Path:
    (tmp_path / "policies/tests").mkdir(parents=True)
    (tmp_path / "pdp").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "policies/rules.polar").write_text(polar, encoding="utf-8")
    (tmp_path / "tests/test_rules.py").write_text(test, encoding="utf-8")
    (tmp_path / "pdp/steps.py").write_text(
        "# carries: C-3\nasync def apply() -> None:\n    pass\n", encoding="utf-8")
    (tmp_path / "policies/tests/05.yaml").write_text(
        "name: rule 5\ncases:\n  # carries: C-3\n  - name: a Kuopio resident\n",
        encoding="utf-8")
    return tmp_path


def test_tags_become_the_matrix_and_uncarried_clauses_are_named(tmp_path: Path) -> None:
    (tmp_path / "DOMAIN.md").write_text(DOMAIN, encoding="utf-8")
    clauses = compliance.read_clauses(tmp_path / "DOMAIN.md")
    assert [c.id for c in clauses] == ["C-1", "C-2", "C-3"]
    root = tree(tmp_path, '# rule 5\n# carries: C-2\nfailing(r, "x") if r.a != r.b;\n',
                "# carries: C-2, C-3\ndef test_own_residents() -> None:\n    pass\n")
    carriers = compliance.collect(root, clauses)
    assert carriers["C-2"].rules == ['`policies/rules.polar` `failing(r, "x")`']
    assert carriers["C-2"].tests == ["`tests/test_rules.py::test_own_residents`"]
    assert carriers["C-3"].steps == ["`pdp/steps.py` apply"]
    assert "`policies/tests/05.yaml`: a Kuopio resident" in carriers["C-3"].tests
    assert compliance.problems(clauses, carriers) == []
    text = compliance.render(clauses, carriers)
    assert "## C-2 (§ 2-3) — software" in text and "test_own_residents" in text
    # Without its test, C-2 is named as not shown; support clauses need nothing.
    (root / "tests/test_rules.py").write_text("def test_other() -> None:\n    pass\n")
    missing = compliance.problems(clauses, compliance.collect(root, clauses))
    assert missing == ["C-2 (own residents only): no test shows it"]


@pytest.mark.parametrize(("polar", "error"), [
    ("# carries: C-9\nf(x);\n", "not a clause of DOMAIN.md"),
    ("# carries: C2\nf(x);\n", "not a clause id"),
    ("# carries: C-2\n\n", "nothing under it"),
])
def test_a_wrong_tag_is_an_error(tmp_path: Path, polar: str, error: str) -> None:
    (tmp_path / "DOMAIN.md").write_text(DOMAIN, encoding="utf-8")
    clauses = compliance.read_clauses(tmp_path / "DOMAIN.md")
    root = tree(tmp_path, polar, "")
    with pytest.raises(compliance.TagError, match=error):
        compliance.collect(root, clauses)


def test_the_copy_of_the_clause_table_reads_back_the_same(tmp_path: Path) -> None:
    (tmp_path / "DOMAIN.md").write_text(DOMAIN, encoding="utf-8")
    clauses = compliance.read_clauses(tmp_path / "DOMAIN.md")
    (tmp_path / "clauses.md").write_text(compliance.render_copy(clauses), encoding="utf-8")
    assert compliance.read_clauses(tmp_path / "clauses.md") == clauses
    # The project's copy is DOMAIN.md's table (when the brief is beside the checkout).
    if compliance.DOMAIN_MD.exists():
        assert compliance.CLAUSES_COPY.read_text("utf-8") == compliance.render_copy(
            compliance.read_clauses(compliance.DOMAIN_MD))
