"""Studies: a base job spec crossed with axes (methods × calibration sets × sparsities × seeds ...).

- `nsa.study.spec`: parse and validate STUDY.yaml (`load_study`, `parse_study`, `StudySpec`).
- `nsa.study.expand`: axes → normalised job specs with run ids (`expand`, `check_size`, `is_finished`).
- `nsa.study.runner`: submit a study's runs to the shared job queue and follow its progress.
- `nsa.study.results`: one table, run × task (accuracy, dense accuracy, drop, intervals), CSV export.
- `nsa.study.breakpoint`: the sharp dropping point per sparsity curve (two-segment piecewise-linear fit).
- `nsa.study.findings`: the paper's two findings as numbers (calibration set matters; sentiment suffers most).
"""
from nsa.study.spec import (
    DEFAULT_MAX_RUNS,
    StudySpec,
    dump_study,
    load_study,
    parse_study,
)

__all__ = ["DEFAULT_MAX_RUNS", "StudySpec", "dump_study", "load_study", "parse_study"]
