"""The dashboard's own helpers (view state, readable errors, run pickers, result tables, plotly figures), kept
out of the `nsa` library: imports point `pruners` ← `nsa` ← `nsa_app` ← `pages/`."""
