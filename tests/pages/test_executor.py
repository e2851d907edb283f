"""Where jobs run, as the Run page says it: with no Ray cluster reachable the page says jobs run on this machine
and how to offer a cluster, without starting Ray (the reachable case: tests/nsa/jobs/test_ray)."""
from __future__ import annotations

from tests.pages.helpers import no_errors, page


def test_no_cluster_means_this_machine_said_in_a_caption(cache_env, monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where `ray start` records a cluster: none here
    at = page("pages/run.py")
    no_errors(at)
    assert "executor" not in [r.key for r in at.radio]  # nothing to choose
    assert any("Jobs run on this machine (no Ray cluster runs on this machine and RAY_ADDRESS is not set"
               in c.value for c in at.caption)
