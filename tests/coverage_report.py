"""Print the branch coverage `make test` measured: the total and the ten least-covered modules.

Exits 1 when the total falls below the floor, ``fail_under`` in pyproject.toml's
``[tool.coverage.report]``. Usage: ``python -m tests.coverage_report`` (after the pytest passes).
"""

import json
import sys
import tempfile
from pathlib import Path

import coverage


def main() -> int:
    cov = coverage.Coverage()
    cov.load()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "coverage.json"
        cov.json_report(outfile=str(out))
        report = json.loads(out.read_text())
    files = sorted(
        (summary["summary"]["percent_covered"], path, summary["summary"])
        for path, summary in report["files"].items()
        if summary["summary"]["num_statements"]
    )
    print("Ten least-covered modules (statements and branches):")
    for percent, path, summary in files[:10]:
        missing = summary["missing_lines"] + summary.get("missing_branches", 0)
        print(f"  {percent:5.1f}%  {path}  ({missing} lines or branches not run)")
    totals = report["totals"]
    total = totals["percent_covered"]
    floor = float(cov.config.fail_under)
    print(
        f"Coverage total: {total:.1f}% of {totals['num_statements']} statements and "
        f"{totals.get('num_branches', 0)} branches (floor {floor:g}%)"
    )
    if total < floor:
        print(f"FAIL: coverage {total:.1f}% is below the floor of {floor:g}% (pyproject.toml, fail_under)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
