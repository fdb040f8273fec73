"""The docs say what the code does (issue 17, item 8): dead-worker timing in both READMEs, and CI
examples that refresh the package lists before installing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from runner.queue.leases import LEASE_TTL_S
from runner.queue.worker import REAP_EVERY_S

ROOT = Path(__file__).resolve().parent.parent
DEAD_WORKER = re.compile(
    r"noticed\s+within\s+about\s+(\d+)\s+seconds\s+\((\d+) s leases, reaped every (\d+) s\)"
)


@pytest.mark.parametrize("doc", ["README.md", "examples/multi-machine/README.md"])
def test_docs_agree_on_how_fast_a_dead_worker_is_noticed(doc: str) -> None:
    text = " ".join((ROOT / doc).read_text(encoding="utf-8").split())
    m = DEAD_WORKER.search(text)
    assert m, f"{doc} does not say how fast a dead worker is noticed in the agreed words"
    about, lease, reap = (int(g) for g in m.groups())
    assert (lease, reap) == (LEASE_TTL_S, REAP_EVERY_S)
    assert LEASE_TTL_S + REAP_EVERY_S <= about <= LEASE_TTL_S + 2 * REAP_EVERY_S


def _run_steps(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [
            str(v) for k, v in node.items() if k in ("run", "script", "before_script") and isinstance(v, str)
        ]
        found += [
            str(x)
            for k, v in node.items()
            if k in ("script", "before_script") and isinstance(v, list)
            for x in v
        ]
        return found + [s for v in node.values() for s in _run_steps(v)]
    if isinstance(node, list):
        return [s for v in node for s in _run_steps(v)]
    return []


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "ci").glob("*.yml")), ids=lambda p: p.name)
def test_docs_ci_examples_update_package_lists_before_installing(path: Path) -> None:
    steps = _run_steps(yaml.safe_load(path.read_text(encoding="utf-8")))
    installing = [s for s in steps if "apt-get install" in s]
    assert installing, f"{path.name} installs nothing with apt-get: this test has nothing to check"
    for step in installing:
        assert "apt-get update" in step.split("apt-get install")[0], step
