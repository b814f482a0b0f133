"""The clinical task rules, in one place: which tasks exist, how their labels are made, how data is split.

Every builder (`prepare mimic3-tasks`, `prepare pmv`), the demo generator and the reports read these
names; none keeps its own copy. The rules are van Aken et al. 2021's admission-note tasks plus PMV
from BEEP (Gema et al. 2023, Table 3).
"""

from __future__ import annotations

# The paper's five outcome-prediction tasks; task folders are named after them.
TASKS = ("los", "mor", "pmv", "diag", "proc")
# Their column order in Table 3, as in the paper.
TABLE3_TASK_ORDER = ("pmv", "mor", "los", "diag", "proc")
# The tasks `prepare mimic3-tasks` builds from MIMIC-III alone (PMV needs BEEP's labels: `prepare pmv`).
MIMIC3_TASKS = ("mor", "los", "diag", "proc")

# A task folder holds one CSV per split; patients never cross splits.
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train / val / test share of the patients (van Aken's split)

#: van Aken's admission-note sections, in their order.
ADMISSION_SECTIONS = (
    "CHIEF COMPLAINT",
    "PRESENT ILLNESS",
    "MEDICAL HISTORY",
    "MEDICATIONS ON ADMISSION",
    "ALLERGIES",
    "PHYSICAL EXAM",
    "FAMILY HISTORY",
    "SOCIAL HISTORY",
)

LOS_EDGES_DAYS = (3.0, 7.0, 14.0)  # classes: 0 <=3, 1 (3,7], 2 (7,14], 3 >14 days
PMV_DAYS = 7.0  # prolonged mechanical ventilation: ventilated for more than 7 days


def cut_dx_code(code: str) -> str:
    """van Aken's simplified ICD-9 diagnosis code: 3 characters, 4 for V and E codes ("E8889" -> "E888")."""
    return code[:4] if code[:1] in ("V", "E") else code[:3]


def cut_proc_code(code: str) -> str:
    """van Aken's simplified ICD-9 procedure code: the first 3 characters ("0066" -> "006")."""
    return code[:3]


def los_class(days: float) -> int:
    """van Aken's LOS classes: 0 <=3 days, 1 (3,7], 2 (7,14], 3 >14."""
    return int(sum(days > edge for edge in LOS_EDGES_DAYS))


#: Age groups of the `age_group` subgroup column (years at admission, lower bounds); MIMIC-III shifts the
#: dates of birth of patients older than 89 so their computed age is about 300: they fall in "90+".
AGE_GROUPS = ((0, "0-17"), (18, "18-44"), (45, "45-64"), (65, "65-89"), (90, "90+"))


def age_group(age_years: int) -> str:
    """The age group label of an age in whole years at admission (>= 90, including MIMIC's shifted ~300: 90+)."""
    label = AGE_GROUPS[0][1]
    for lower, name in AGE_GROUPS:
        if age_years >= lower:
            label = name
    return label


def age_at(admit, dob) -> int:
    """Whole years between a date of birth and an admission, by calendar (no timedelta: MIMIC's shifted
    dates of birth are ~300 years back, beyond pandas' timedelta range)."""
    return int(admit.year - dob.year - ((admit.month, admit.day) < (dob.month, dob.day)))
