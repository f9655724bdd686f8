"""The planted-fault family's verdict: each fault is handled, crashed or passed silently. ``fault_tally`` is a
mapping that collects the verdicts (in cotune's suite the ``fault_tally`` fixture of tests/conftest.py, which
reports them in the terminal summary)."""


def judge(fault_tally, name, check):
    """Runs ``check`` (returns None when handled, else what went silently wrong) and tallies it."""
    try:
        problem = check()
    except Exception as err:  # noqa: BLE001 - a crash is what this test family counts
        fault_tally[name] = "crashed"
        raise AssertionError(f"{name}: crashed with {type(err).__name__}: {err}") from err
    fault_tally[name] = "silent" if problem else "handled"
    assert not problem, f"{name}: {problem}"
