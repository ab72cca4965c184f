"""Shared pytest hooks: the fuzz suite's counts at the end of a run."""


def pytest_terminal_summary(terminalreporter):
    import sys

    fuzz = sys.modules.get("test_fuzz") or sys.modules.get("tests.test_fuzz")
    if fuzz is None or not fuzz.COUNTS["cases"]:
        return
    c = fuzz.COUNTS
    failed = len([r for r in terminalreporter.stats.get("failed", []) if "test_fuzz" in r.nodeid])
    terminalreporter.write_line(f"fuzz: {c['cases']} generated cases, {c['clean errors']} clean one-line errors, "
                                f"{c['successes']} successes (invariants checked); failing fuzz tests: {failed}")
