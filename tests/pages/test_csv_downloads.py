"""CSV downloads are formula-injection safe: a cell a spreadsheet would run as a formula (`=…`, `+…`, `-…`, `@…`)
gets a leading ', and every download of the app builds its CSV through the one helper, `nsa_app.ui.safe_csv`."""
from __future__ import annotations

import ast
import csv
import io
import json

from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from nsa.jobs.pipeline import run_job
from nsa.neuron_export import FORMULA_START, export_text
from tests.conftest import ROOT, small_spec
from tests.pages.helpers import no_errors, page


def test_the_semantics_words_download_neutralises_formulas(tmp_path, monkeypatch, stories_dir):
    """A shared word file's cluster names reach the words table (and its download) as given: a run made with
    clusters named like formulas downloads them quoted, numbers untouched."""
    monkeypatch.setenv("NSA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NSA_NO_WORKER", "1")
    words = tmp_path / "words.json"
    words.write_text(json.dumps({'=HYPERLINK("http://example.com","x")': ["the"], "@neg": ["and"]}))
    spec = small_spec(stories_dir, "magnitude")
    spec["nsa"] = {**spec["nsa"], "words": str(words)}
    folder = run_job(spec)

    served: dict[str, bytes] = {}  # what the page hands to Streamlit's media storage, by file name
    load = MemoryMediaFileStorage.load_and_get_id

    def keep(self, data, mimetype, kind, filename=None):
        served[filename] = data
        return load(self, data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    at = page("pages/semantics.py", run=folder.name)
    no_errors(at)
    rows = list(csv.DictReader(io.StringIO(served["words.csv"].decode())))
    assert {r["cluster"] for r in rows} == {'\'=HYPERLINK("http://example.com","x")', "'@neg"}
    assert {r["word"] for r in rows} == {"the", "and"} and all(float(r["score"]) == 1.0 for r in rows)
    assert not any(cell.startswith(FORMULA_START) for r in rows for cell in r.values())


def test_every_csv_download_goes_through_safe_csv():
    """No page or app module writes CSV text itself (`DataFrame.to_csv`) except `safe_csv`: a new download that
    did would hand spreadsheets raw formulas again."""
    outside = []
    for path in sorted([*(ROOT / "pages").glob("*.py"), *(ROOT / "nsa_app").glob("*.py")]):
        tree = ast.parse(path.read_text())
        allowed = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "safe_csv"
                   for n in ast.walk(f)}
        outside += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree)
                    if isinstance(n, ast.Attribute) and n.attr == "to_csv" and id(n) not in allowed]
    assert not outside, f"CSV written without nsa_app.ui.safe_csv at {outside}"


def test_the_neuron_export_csv_quotes_the_same_formula_starts():
    """The Neurons page's export is `nsa neurons --export`'s CSV (nsa/ cannot import the app's helper): the same
    starts are quoted there, tab and carriage return included."""
    records = [{"layer": 0, "index": i, "explanations": [{"description": start + "x", "cluster": start + "c",
                                                           "words": [start + "w"], "scores": {}}],
                "pos_str": [start + "p"], "neg_str": [], "pruned_pos_str": [], "pruned_neg_str": [],
                "frac_in": -0.5, "frac_out": 0.5, "frac": 0.25, "removed": False, "activations": []}
               for i, start in enumerate(FORMULA_START)]
    text = export_text(records, ".csv")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    texts = [r[k] for r in rows for k in ("label", "cluster", "words", "pos_str")]
    assert all(t.startswith("'") and not t.startswith("''") for t in texts), text
    assert {r["frac_in"] for r in rows} == {"-0.5"}  # numbers untouched
