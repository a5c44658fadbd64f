"""The mutation check (`python -m tests.mutants`) plants faults by exact source text; CI does not run it (it
runs the suite once per fault), so this fast test says when a refactor moved a fault's source and the mutant
needs updating (two did go stale unnoticed: the mask and the speaker setter)."""

from tests.mutants import MUTANTS, REPO


def test_every_planted_fault_still_finds_its_source_exactly_once() -> None:
    stale = [m.name for m in MUTANTS if (REPO / m.path).read_text().count(m.old) != 1]
    assert not stale, f"update these mutants in tests/mutants.py: {stale}"
