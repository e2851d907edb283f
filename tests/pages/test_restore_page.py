"""The Semantics page's restore view (AppTest, on a stories260K fixture run): the restore runs from the page with
a progress bar, is cached, and is shown beside the run's ablation with the numbers of `nsa.restore`."""
from __future__ import annotations

import pytest

from nsa.restore import RestoreConfig, cached_restore
from nsa_app import results
from tests.pages.helpers import no_errors, page


def test_restore_beside_ablation(run_ids, cache_env):
    rid = run_ids[-1]
    at = page("pages/semantics.py", run=rid)
    no_errors(at)
    assert any(s.value == "Ablation and restore: the same neurons, both ways" for s in at.subheader)
    at.number_input(key="restore-seed").set_value(7).run()  # a setting no other test computed
    config = RestoreConfig(cluster="positive", seed=7)
    assert cached_restore(rid, config) is None
    assert any(c.value.startswith("Not computed yet: 21 scorings of the 24 examples") for c in at.caption)
    at.button(key="restore-run").click().run()
    no_errors(at)
    result = cached_restore(rid, config)
    assert result is not None and result["selection"]["cluster"] == "positive"
    ablation, restore = results.ablation_and_restore(results.validation(rid), result)
    shown = [m.value for m in at.markdown]
    assert ablation in shown and restore in shown
    assert ablation.startswith("ablation: removing the ") and "from the dense model costs" in ablation
    assert restore.startswith("restore: putting the ") and "back into the pruned model" in restore
    table = at.dataframe[-1].value
    s = result["scopes"]["all"]
    assert table["n"].tolist()[0] == s["n"] == 24
    assert table["recovered_points"].tolist()[0] == pytest.approx(s["recovered_points"], rel=1e-3, abs=1e-6)
    assert table["p_margin"].tolist()[0] == pytest.approx(s["p_margin"], rel=1e-3)  # shown to 4 significant digits
    again = page("pages/semantics.py", run=rid)  # a later visit shows the cached result without a button
    again.number_input(key="restore-seed").set_value(7).run()
    assert restore in [m.value for m in again.markdown] and not [b for b in again.button if b.key == "restore-run"]


def test_hand_picked_typo_is_a_sentence(run_ids, cache_env):
    at = page("pages/semantics.py", run=run_ids[0])
    at.radio(key="restore-mode").set_value("hand-picked").run()
    at.text_input(key="restore-neurons").input("0:3, 9:1").run()
    no_errors(at)
    assert any("9:1 are outside the model" in w.value for w in at.warning)
