"""`python -m nsa restore`: refusals in seconds (exit 2, one sentence) and a restore on a real stories260K run."""
from __future__ import annotations

import pytest

from nsa.cli import main
from tests.conftest import cpu_time


@pytest.mark.parametrize("extra, message", [
    (["--cluster", "neutral"], "error: --cluster: run {rid} has no cluster 'neutral'; its clusters: negative, positive"),
    (["--neurons", "0:1", "--draws", "5"], "error: --draws: must be an integer of at least 20, got 5"),
    (["--neurons", "9:1"], "error: --neurons: neuron(s) 9:1 are outside the model"),
    (["--neurons", ","], "error: --neurons: an empty selection"),
])
def test_refusals(run_ids, extra, message, capsys):
    rid = run_ids[0]
    started = cpu_time()
    assert main(["restore", rid, *extra]) == 2
    assert message.format(rid=rid) in capsys.readouterr().err
    assert cpu_time() - started < 5


def test_not_a_run(cache_env, capsys):
    assert main(["restore", "0123456789abcdef", "--neurons", "0:1"]) == 2
    assert "no complete run 0123456789abcdef" in capsys.readouterr().err


def test_restore_hand_picked_neurons(run_ids, capsys):
    rid = run_ids[0]
    assert main(["restore", rid, "--neurons", "0:3,2:40,4:100", "--seed", "1"]) == 0
    printed = capsys.readouterr()
    assert f"restore on run {rid}: 3 hand-picked neurons; task sst2, n = 24 examples, 20 random draws" \
        in printed.out
    assert "all 24 examples:" in printed.out and "recovered" in printed.out and "random" in printed.out
    assert "restore" in printed.err  # the progress bar
    assert main(["restore", rid, "--neurons", "4:100,0:3,2:40", "--seed", "1"]) == 0  # same set: cached
    assert "[cached]" in capsys.readouterr().out
