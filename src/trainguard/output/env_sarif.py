"""SARIF 2.1.0 for environment reports, built by ``sarif.log`` like the scan report.

Files become artifact locations; environment variables (``<environment>``) become
logical locations only, since they have no file to point at.
"""

from __future__ import annotations

from trainguard.env.report import EnvReport
from trainguard.output.sarif import log


def render(report: EnvReport) -> str:
    invocation = {
        "executionSuccessful": report.complete,
        "properties": {"summary": report.summary()},
    }
    return log([(f, {}) for f in report.findings], invocation=invocation)
