"""Everything the Study page shows for one study, computed once: the table, breakpoints, findings, figures."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from nsa.study import findings
from nsa.study.breakpoint import table_breakpoints
from nsa.study.runner import StudyPlan, study_table
from nsa_app import study_figures as figures


@dataclass
class StudyReport:
    table: pd.DataFrame
    breakpoints: pd.DataFrame
    calibration_effect: pd.DataFrame
    group_effect: pd.DataFrame
    group_effect_competent: pd.DataFrame = field(default_factory=pd.DataFrame)  # tasks the dense model does
    tasks: list[str] = field(default_factory=list)
    default_task: str | None = None

    def accuracy_figure(self, task: str | None = None):
        return figures.accuracy_figure(self.table, self.breakpoints, task or self.default_task)

    def group_figure(self):
        return figures.group_drop_figure(self.table)

    def heatmap(self, task: str | None = None):
        return figures.calibration_heatmap(self.table, task)


def study_report(plan: StudyPlan) -> StudyReport:
    return report_from_table(study_table(plan))


def report_from_table(table: pd.DataFrame) -> StudyReport:
    if table.empty:
        empty = pd.DataFrame()
        return StudyReport(table=table, breakpoints=empty, calibration_effect=empty, group_effect=empty,
                           group_effect_competent=empty)
    return StudyReport(table=table, breakpoints=table_breakpoints(table),
                       calibration_effect=findings.calibration_effect(table), group_effect=findings.group_effect(table),
                       group_effect_competent=findings.group_effect(table, competent_only=True),
                       tasks=list(dict.fromkeys(table["task"])), default_task=figures.default_task(table))
