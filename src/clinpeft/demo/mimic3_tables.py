"""Small MIMIC-III tables whose right answer is known, for testing `clinpeft prepare mimic3-tasks`.

    from clinpeft.demo.mimic3_tables import write_mimic3_tables
    truth = write_mimic3_tables("mimic3", n_patients=30, seed=0)   # mimic3/NOTEEVENTS.csv.gz, ADMISSIONS.csv.gz, ...
    truth.expected("mor")        # {hadm_id: (subject_id, text, label)} that the builder must write

Writes NOTEEVENTS, ADMISSIONS, DIAGNOSES_ICD and PROCEDURES_ICD with MIMIC-III v1.4's upper-case
column names, dates in MIMIC's shifted years, `[** **]` de-identification marks, as `.csv.gz`
(or `.csv`). Two kinds of admissions:

* **bulk** admissions drawn from the latent patient model of `clinpeft.demo.synthetic` (their
  conditions decide codes, death and length of stay; the notes are written from them), so every
  split holds patients with several admissions, deaths and all four LOS classes;
* **scenario** admissions (`SCENARIOS`), each built to trip exactly one rule of `clinpeft.prepare.mimic3`: a
  newborn, an admission without a "Report", a report with its addendum filed first, sections in
  shuffled order and odd case, missing or only irrelevant sections, a section that must end only at
  a blank line followed by a new "Heading:", explicit death mentions, LOS exactly on 3, 7 and 14
  days (and 1 or 3 hours past them), V and E codes, codes with leading zeros, duplicate codes.

`Mimic3Truth` records, per admission, whether it reaches the task cohort (and if not, why), its
subject, the eight section bodies as written (newlines become spaces, as the builder flattens
them) and its labels. Nothing here is computed by the builder's code, so the tests compare two
independent derivations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from clinpeft.data import definitions
from clinpeft.demo import synthetic as syn

TABLES = ("NOTEEVENTS", "ADMISSIONS", "DIAGNOSES_ICD", "PROCEDURES_ICD")
NOTE_COLUMNS = ("ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY", "DESCRIPTION",
                "CGID", "ISERROR", "TEXT")
ADMISSION_COLUMNS = ("ROW_ID", "SUBJECT_ID", "HADM_ID", "ADMITTIME", "DISCHTIME", "DEATHTIME", "ADMISSION_TYPE",
                     "ADMISSION_LOCATION", "DISCHARGE_LOCATION", "INSURANCE", "ETHNICITY", "HOSPITAL_EXPIRE_FLAG")
PATIENT_COLUMNS = ("ROW_ID", "SUBJECT_ID", "GENDER", "DOB", "DOD", "EXPIRE_FLAG")
INSURANCES = ("Medicare", "Private", "Medicaid", "Government", "Self Pay")
ETHNICITIES = ("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC OR LATINO", "ASIAN", "UNKNOWN/NOT SPECIFIED")
CODE_COLUMNS = ("ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE")

#: How MIMIC-III discharge summaries head van Aken's eight sections (matched case-insensitively by
#: the builder on "chief complaint:", "present illness:", ...), in definitions.ADMISSION_SECTIONS order.
NOTE_HEADINGS = ("Chief Complaint", "History of Present Illness", "Past Medical History", "Medications on Admission",
                 "Allergies", "Physical Exam", "Family History", "Social History")

_STREAM_COHORT, _STREAM_TEXT = 21, 22
_BULK_SUBJECT_BASE = 1000  # MIMIC-III subject ids have up to 5 digits, hadm ids 6
_SCENARIO_SUBJECT_BASE, _SCENARIO_HADM_BASE = 90_000, 190_000
_DEID = "[**Known lastname 1234**]"


@dataclass
class ExpectedAdmission:
    """What `prepare mimic3-tasks` must make of one admission."""

    hadm_id: int
    subject_id: int
    # why it is not in any task: newborn, no_discharge_summary, no_report, no_admission_sections
    excluded: str | None = None
    sections: tuple[str, ...] = ("",) * 8  # the 8 bodies, flattened, in definitions.ADMISSION_SECTIONS order
    died: bool = False
    los_class: int | None = None  # None: died (out of the LOS task)
    diag: tuple[str, ...] = ()  # cut, deduplicated, in coding order
    proc: tuple[str, ...] = ()
    death_phrases: tuple[str, ...] = ()  # written in the note, must be gone from the MOR text
    pmv: str | None = None  # "1" ventilated > 7 days, "0" ventilated less; None: not ventilated (not in PMV)
    gender: str = "F"  # subgroup columns (PATIENTS.GENDER; age group at admission; ADMISSIONS)
    age_group: str = "45-64"
    ethnicity: str = "WHITE"
    insurance: str = "Medicare"

    @property
    def text(self) -> str:
        """The admission note as the builder writes it: always the 8 headings, in order."""
        return "\n\n".join(f"{h}: {b}" for h, b in zip(definitions.ADMISSION_SECTIONS, self.sections))


@dataclass
class Mimic3Truth:
    paths: dict[str, Path]  # table name -> file
    admissions: dict[int, ExpectedAdmission] = field(default_factory=dict)  # every admission that has any note
    scenarios: dict[str, int] = field(default_factory=dict)  # scenario name -> its hadm_id

    def cohort(self) -> dict[int, ExpectedAdmission]:
        return {h: a for h, a in self.admissions.items() if a.excluded is None}

    def write_pmv_labels(self, path: str | Path, seed: int = 0) -> dict[int, tuple[str, str]]:
        """A BEEP-style PMV label file (hadm_id,label,split) for the ventilated admissions of the cohort, split
        by patient with its own seed (BEEP's split, not ours); return {hadm_id: (label, split)}."""
        ventilated = {h: a for h, a in self.cohort().items() if a.pmv is not None}
        subjects = sorted({a.subject_id for a in ventilated.values()})
        split_names = syn.patient_split(len(subjects), seed)
        split_of = dict(zip(subjects, split_names))
        rows = {h: (a.pmv, split_of[a.subject_id]) for h, a in sorted(ventilated.items())}
        frame = pd.DataFrame([(h, label, split) for h, (label, split) in rows.items()],
                             columns=["hadm_id", "label", "split"])
        syn.write_csv(frame, Path(path))
        return rows

    def expected(self, task: str) -> dict[int, tuple[int, str | None, str]]:
        """{hadm_id: (subject_id, text or None, label)} of a task; text None for MOR (death mentions
        removed: check separately)."""
        out = {}
        for hadm, a in self.cohort().items():
            if task == "mor":
                out[hadm] = (a.subject_id, None, str(int(a.died)))
            elif task == "los" and a.los_class is not None:
                out[hadm] = (a.subject_id, a.text, str(a.los_class))
            elif task in ("diag", "proc") and getattr(a, task):
                out[hadm] = (a.subject_id, a.text, ",".join(getattr(a, task)))
        return out


# --------------------------------------------------------------------------------------------
# Table rows
# --------------------------------------------------------------------------------------------


class _Tables:
    def __init__(self):
        self.notes, self.admissions, self.diagnoses, self.procedures = [], [], [], []
        self.patients: dict[int, tuple[str, str]] = {}  # subject -> (GENDER, DOB)

    def patient(self, subject: int, gender: str, admit: datetime, age: int) -> str:
        """Registers a patient aged `age` at `admit` (born on admit's day and month); MIMIC's shift: > 89 -> 300
        years back. Returns the age group `prepare` must derive. The first registration of a subject wins."""
        years = 300 if age > 89 else age
        if subject not in self.patients:
            self.patients[subject] = (gender, f"{admit.year - years:04d}-{admit.month:02d}-{min(admit.day, 28):02d} "
                                              "00:00:00")
        gender, dob = self.patients[subject]
        born = datetime(int(dob[:4]), int(dob[5:7]), int(dob[8:10]))
        return definitions.age_group(definitions.age_at(admit, born))

    def admission(self, subject: int, hadm: int, admit: datetime, los_days: float, died: bool = False,
                  admission_type: str = "EMERGENCY", dx: tuple[str, ...] = (), procs: tuple[str, ...] = (),
                  insurance: str = "Medicare", ethnicity: str = "WHITE") -> datetime:
        disch = admit + timedelta(days=los_days)
        self.admissions.append((len(self.admissions) + 1, subject, hadm, _ts(admit), _ts(disch),
                                _ts(disch) if died else "", admission_type, "EMERGENCY ROOM ADMIT",
                                "DEAD/EXPIRED" if died else "HOME", insurance, ethnicity, int(died)))
        for table, codes in ((self.diagnoses, dx), (self.procedures, procs)):
            for seq, code in enumerate(codes, 1):
                table.append((len(table) + 1, subject, hadm, seq, code))
        return disch

    def note(self, subject: int, hadm: int | None, chartdate: datetime, text: str | None,
             category: str = "Discharge summary", description: str = "Report") -> None:
        self.notes.append((len(self.notes) + 1, subject, hadm, chartdate.strftime("%Y-%m-%d"), "", "", category,
                           description, "", "", text))

    def write(self, out_dir: Path, gzip: bool, patients: bool = True) -> dict[str, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = ".csv.gz" if gzip else ".csv"
        for row in self.admissions:  # scenario patients not registered: female, 50 at their admission
            admit = datetime.strptime(row[3], "%Y-%m-%d %H:%M:%S")
            self.patient(row[1], "F", admit, 50)
        frames = {} if not patients else {"PATIENTS": pd.DataFrame(
            [(i + 1, s, g, dob, "", 0) for i, (s, (g, dob)) in enumerate(sorted(self.patients.items()))],
            columns=list(PATIENT_COLUMNS))}
        frames |= {
            "NOTEEVENTS": pd.DataFrame(self.notes, columns=list(NOTE_COLUMNS)),
            "ADMISSIONS": pd.DataFrame(self.admissions, columns=list(ADMISSION_COLUMNS)),
            "DIAGNOSES_ICD": pd.DataFrame(self.diagnoses, columns=list(CODE_COLUMNS)),
            "PROCEDURES_ICD": pd.DataFrame(self.procedures, columns=list(CODE_COLUMNS)),
        }
        frames["NOTEEVENTS"]["HADM_ID"] = frames["NOTEEVENTS"]["HADM_ID"].astype("Int64")  # empty for outpatient notes
        paths = {}
        for name, frame in frames.items():
            paths[name] = out_dir / f"{name}{suffix}"
            (syn.write_gzip_csv if gzip else syn.write_csv)(frame, paths[name])
        return paths


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def _flat(body: str) -> str:
    """A section body as the builder outputs it: each newline becomes a space, ends stripped."""
    return body.replace("\n", " ").strip()


def discharge_summary(bodies: dict[str, str], headings: dict[str, str] | None = None,
                      order: tuple[str, ...] | None = None, sex: str = "M", service: str = "MEDICINE") -> str:
    """A MIMIC-III-shaped discharge summary holding the given section bodies (keys: NOTE_HEADINGS).

    Irrelevant sections (service, procedures, hospital course, discharge medications, ...) sit
    between and after them, as in MIMIC; `headings` renames a heading (odd case), `order` reorders.
    """
    headings = headings or {}
    order = order or tuple(h for h in NOTE_HEADINGS if h in bodies)
    parts = ["Admission Date:  [**2151-7-16**]              Discharge Date:   [**2151-8-4**]",
             f"Date of Birth:  [**2086-9-1**]             Sex:   {sex}", f"Service: {service}"]
    for i, key in enumerate(order):
        parts.append(f"{headings.get(key, key)}:\n{bodies[key]}")
        if i == 1:
            parts.append("Major Surgical or Invasive Procedure:\nNone")
    parts += ["Pertinent Results:\n[**2151-7-16**] 07:40AM BLOOD WBC-8.1 Hgb-12.3 Hct-36.9",
              "Brief Hospital Course:\nAdmitted to the floor. Treated and improved.",
              "Discharge Medications:\n1. Aspirin 81 mg PO DAILY",
              "Discharge Disposition:\nHome", f"Followup Instructions:\n{_DEID}"]
    return "\n\n".join(parts)


def _bodies(rng, adm) -> dict[str, str]:
    """The 8 section bodies of a bulk admission, from synthetic.py's note writers; no blank lines inside."""
    documented = syn.as_documented(rng, adm)
    writers = (syn.section_chief_complaint, syn.section_present_illness, syn.section_medical_history,
               syn.section_medications, lambda r, a: syn.section_allergies(r), syn.section_physical_exam,
               lambda r, a: syn.section_family_history(r), syn.section_social_history)
    return {h: w(rng, documented).replace("___", _DEID).replace("\n\n", "\n") for h, w in zip(NOTE_HEADINGS, writers)}


def _away_from_edges(days: float) -> float:
    """Bulk stays keep 0.2 days from a LOS class edge: only the scenarios test the edges."""
    for edge in definitions.LOS_EDGES_DAYS:
        if abs(days - edge) < 0.2:
            return edge + 0.25
    return days


# --------------------------------------------------------------------------------------------
# Scenarios: one admission (or patient) per rule
# --------------------------------------------------------------------------------------------

def _plain(hadm: int) -> dict[str, str]:
    """A complete, ordinary admission note, unique to its admission (the same note in two splits would be a leak)."""
    return {**_PLAIN, "Family History": f"Non-contributory. Reviewed on admission {hadm}."}


_PLAIN = {
    "Chief Complaint": "shortness of breath",
    "History of Present Illness": "67 y/o M with CHF who presents with 3 days of\nworsening dyspnea.",
    "Past Medical History": "- CHF\n- HTN",
    "Medications on Admission": "1. Furosemide 40 mg PO DAILY",
    "Allergies": "NKDA",
    "Physical Exam": "GEN: NAD\nLungs: bibasilar crackles",
    "Family History": "Non-contributory.",
    "Social History": "Lives with wife. Never smoker.",
}

#: name -> what it checks. Each is one admission of its own patient unless said otherwise.
SCENARIOS = {
    "newborn": "ADMISSION_TYPE NEWBORN: excluded although its note is complete",
    "only_nursing_note": "no discharge summary, only a Nursing note with all sections: excluded",
    "physician_note_too": "a discharge summary plus a Physician note whose words must not reach the output",
    "addendum_first_in_file": "Report without social history + an Addendum (later date, earlier in the file) "
                              "that has it: joined, Report first",
    "addendum_only": "discharge summary described 'Addendum' only, no 'Report': excluded",
    "empty_report_and_addendum": "an empty Report and a full Addendum: no non-empty Report, excluded",
    "empty_addendum": "a full Report and an empty Addendum: kept",
    "shuffled_odd_case": "all 8 sections in reverse order with headings in odd case: output in fixed order",
    "missing_sections": "only chief complaint and present illness: kept, the other 6 headings empty",
    "only_medical_history": "only past medical history among the main three: kept (kept-note rule)",
    "irrelevant_only": "allergies, physical exam and other sections, none of the main three: dropped",
    "blank_line_rules": "present illness holds a blank line before '2. ...:' (digit: not a heading) and a "
                        "'Neuro: ...' line after a single newline; ends at a blank line + 'Pertinent Results:'",
    "death_mentions": "in-hospital death whose note says the patient died / expired / deceased: removed for MOR",
    "los_3d": "exactly 3 days: class 0", "los_3d1h": "3 days 1 hour = 3.04, rounded to 3.0 days: class 0",
    "los_3d3h": "3 days 3 hours = 3.1 days: class 1", "los_7d": "exactly 7 days: class 1",
    "los_7d3h": "7.1 days: class 2", "los_14d": "exactly 14 days: class 2", "los_14d3h": "14.1 days: class 3",
    "died_long_stay": "in-hospital death after 20 days: in MOR (1), not in LOS",
    "codes": "V4581 -> V458, E8798 -> E879, 0389 -> 038, 4280 and 4281 -> 428 once, a duplicate row, an "
             "empty code; procedures 0066 -> 006, 3893 -> 389 twice -> once",
    "no_codes": "no diagnosis or procedure rows: in MOR and LOS, not in DIAG or PROC",
    "three_admissions": "one patient, three admissions: all in the same split",
}


def _write_scenarios(tables: _Tables, truth: Mimic3Truth, start: datetime) -> None:
    subject, hadm = _SCENARIO_SUBJECT_BASE, _SCENARIO_HADM_BASE
    t = start

    def new(name: str, same_subject: bool = False, sections=None,
            **expected) -> tuple[int, int, dict[str, str]]:
        """The next scenario admission and its own complete note bodies; sections: F -> expected flat sections."""
        nonlocal subject, hadm, t
        subject += 0 if same_subject else 1
        hadm += 1
        t += timedelta(days=40)
        plain = _plain(hadm)
        flat = tuple(_flat(plain[h]) for h in NOTE_HEADINGS)
        truth.scenarios[name if name not in truth.scenarios else f"{name}_{hadm}"] = hadm
        truth.admissions[hadm] = ExpectedAdmission(hadm, subject,
                                                   **{"sections": sections(flat) if sections else flat,
                                                      "los_class": 0, **expected})
        return subject, hadm, plain

    def plain_stay(s, h, **kw):
        return tables.admission(s, h, t, kw.pop("los", 2.0), dx=kw.pop("dx", ("4280",)),
                                procs=kw.pop("procs", ("3893",)), **kw)

    def expect_codes(h, dx=("428",), proc=("389",)):
        truth.admissions[h].diag, truth.admissions[h].proc = dx, proc

    s, h, P = new("newborn", excluded="newborn")
    tables.note(s, h, plain_stay(s, h, admission_type="NEWBORN"), discharge_summary(P))

    s, h, P = new("only_nursing_note", excluded="no_discharge_summary")
    tables.note(s, h, plain_stay(s, h), discharge_summary(P), category="Nursing", description="Nursing Progress Note")

    s, h, P = new("physician_note_too")
    end = plain_stay(s, h)
    expect_codes(h)
    tables.note(s, h, end - timedelta(days=1), "Chief Complaint:\nphysicianmarker\n\nPlan:\nmore",
                category="Physician ", description="Physician Resident Progress Note")
    tables.note(s, h, end, discharge_summary(P))

    s, h, P = new("addendum_first_in_file", sections=lambda F: F[:7] + ("Lives alone. Quit tobacco.",))
    end = plain_stay(s, h)
    expect_codes(h)
    report = {k: v for k, v in P.items() if k != "Social History"}
    tables.note(s, h, end + timedelta(days=2),
                "Social History:\nLives alone.\nQuit tobacco.\n\nFollowup Instructions:\nPCP",
                description="Addendum")
    tables.note(s, h, end, discharge_summary(report))

    s, h, P = new("addendum_only", excluded="no_report")
    tables.note(s, h, plain_stay(s, h), discharge_summary(P), description="Addendum")

    s, h, P = new("empty_report_and_addendum", excluded="no_report")
    end = plain_stay(s, h)
    tables.note(s, h, end, "   ")
    tables.note(s, h, end, discharge_summary(P), description="Addendum")

    s, h, P = new("empty_addendum")
    end = plain_stay(s, h)
    expect_codes(h)
    tables.note(s, h, end, discharge_summary(P))
    tables.note(s, h, end + timedelta(days=1), None, description="Addendum")

    s, h, P = new("shuffled_odd_case")
    expect_codes(h)
    odd = {k: "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(k)) for k in NOTE_HEADINGS}
    tables.note(s, h, plain_stay(s, h), discharge_summary(P, headings=odd, order=NOTE_HEADINGS[::-1]))

    s, h, P = new("missing_sections", sections=lambda F: F[:2] + ("",) * 6)
    expect_codes(h)
    tables.note(s, h, plain_stay(s, h), discharge_summary({k: P[k] for k in NOTE_HEADINGS[:2]}))

    s, h, P = new("only_medical_history", sections=lambda F: ("", "", F[2]) + ("",) * 5)
    expect_codes(h)
    tables.note(s, h, plain_stay(s, h), discharge_summary({"Past Medical History": P["Past Medical History"]}))

    s, h, P = new("irrelevant_only", excluded="no_admission_sections")
    tables.note(s, h, plain_stay(s, h), discharge_summary({k: P[k] for k in ("Allergies", "Physical Exam")}))

    hpi = "Pt with 2 days of fever.\n\n2. also reports cough: since Monday\nNeuro: intact"
    s, h, P = new("blank_line_rules", sections=lambda F: (F[0], _flat(hpi)) + F[2:])
    expect_codes(h)
    tables.note(s, h, plain_stay(s, h), discharge_summary({**P, "History of Present Illness": hpi}))

    death_hpi = "Found down at home. Per ED the patient died briefly and was resuscitated. Wife deceased."
    s, h, P = new("death_mentions", died=True, los_class=None, sections=lambda F: (F[0], _flat(death_hpi)) + F[2:],
               death_phrases=("died", "deceased"))
    expect_codes(h)
    tables.note(s, h, plain_stay(s, h, died=True),
                discharge_summary({**P, "History of Present Illness": death_hpi}))

    for name, days, cls in (("los_3d", 3, 0), ("los_3d1h", 3 + 1 / 24, 0), ("los_3d3h", 3 + 3 / 24, 1),
                            ("los_7d", 7, 1), ("los_7d3h", 7 + 3 / 24, 2), ("los_14d", 14, 2),
                            ("los_14d3h", 14 + 3 / 24, 3)):
        s, h, P = new(name, los_class=cls)
        expect_codes(h)
        tables.note(s, h, plain_stay(s, h, los=days), discharge_summary(P))

    s, h, P = new("died_long_stay", died=True, los_class=None)
    expect_codes(h)
    tables.note(s, h, plain_stay(s, h, los=20.0, died=True), discharge_summary(P))

    s, h, P = new("codes")
    expect_codes(h, dx=("V458", "E879", "038", "428"), proc=("006", "389"))
    end = plain_stay(s, h, dx=("V4581", "E8798", "0389", "4280", "4281", "0389", ""), procs=("0066", "3893", "3891"))
    tables.note(s, h, end, discharge_summary(P))

    s, h, P = new("no_codes")
    tables.note(s, h, plain_stay(s, h, dx=(), procs=()), discharge_summary(P))

    for k in range(3):
        s, h, P = new("three_admissions", same_subject=k > 0)
        expect_codes(h)
        tables.note(s, h, plain_stay(s, h), discharge_summary(P))


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------


def write_mimic3_tables(out_dir: str | Path, n_patients: int = 30, seed: int = 0, gzip: bool = True,
                        patients: bool = True) -> Mimic3Truth:
    """Write NOTEEVENTS, ADMISSIONS, DIAGNOSES_ICD, PROCEDURES_ICD (`.csv.gz`, or `.csv` if not gzip) into out_dir,
    and PATIENTS (GENDER, DOB; ages over 89 shifted 300 years back as MIMIC does) unless `patients` is False.
    ADMISSIONS carries INSURANCE and ETHNICITY; the truth records each admission's subgroup values.

    n_patients bulk patients (1-2 admissions each) plus the SCENARIOS; returns the ground truth.
    Same seed, same bytes.
    """
    cohort_rng, rng = syn.seeded_rng(seed, _STREAM_COHORT), syn.seeded_rng(seed, _STREAM_TEXT)
    tables = _Tables()
    truth = Mimic3Truth(paths={})
    start = datetime(2150, 1, 1)
    first_admit: dict[int, datetime] = {}
    for adm in syn.draw_cohort(cohort_rng, n_patients):
        subject, hadm = _BULK_SUBJECT_BASE + adm.patient, adm.hadm_id  # hadm ids 100000 + 10 * patient + k
        if adm.patient not in first_admit:
            first_admit[adm.patient] = start + timedelta(days=int(rng.integers(0, 20 * 365)),
                                                         minutes=int(rng.integers(0, 1440)))
        admit = first_admit[adm.patient] + timedelta(days=400 * (hadm % 10))  # a later admission, a year or so on
        los_days = _away_from_edges(round(adm.los_days * 24 * 60) / (24 * 60))  # whole minutes, as MIMIC stores them
        demo_rng = np.random.default_rng(hadm)  # own stream: the other tables' bytes do not move
        insurance, ethnicity = INSURANCES[demo_rng.integers(len(INSURANCES))], ETHNICITIES[demo_rng.integers(5)]
        group = tables.patient(subject, adm.sex, admit, adm.age)
        disch = tables.admission(subject, hadm, admit, los_days, adm.died, dx=tuple(adm.dx), procs=tuple(adm.procs),
                                 insurance=insurance, ethnicity=ethnicity)
        bodies = _bodies(rng, adm)
        sections = tuple(_flat(bodies[h]) for h in NOTE_HEADINGS)
        kept = any(sections[:3])
        truth.admissions[hadm] = ExpectedAdmission(
            hadm, subject, excluded=None if kept else "no_admission_sections", sections=sections, died=adm.died,
            los_class=None if adm.died else definitions.los_class(los_days),
            diag=tuple(syn.dedupe(definitions.cut_dx_code(c) for c in adm.dx)),
            proc=tuple(syn.dedupe(definitions.cut_proc_code(c) for c in adm.procs)),
            pmv=str(int(adm.vent_days > definitions.PMV_DAYS)) if adm.vent else None,
            gender=tables.patients[subject][0], age_group=group, ethnicity=ethnicity, insurance=insurance)
        tables.note(subject, hadm, disch, discharge_summary(bodies, sex=adm.sex, service=adm.reason.service))
        if rng.random() < 0.5:  # other note categories, which the builder must skip
            tables.note(subject, hadm, admit + timedelta(days=1), f"CHEST (PORTABLE AP)\n\nIMPRESSION: {_DEID}",
                        "Radiology", "CHEST (PORTABLE AP)")
        if rng.random() < 0.2:  # outpatient note without HADM_ID
            tables.note(subject, None, admit - timedelta(days=30), "ECG: sinus rhythm", "ECG", "Report")
    _write_scenarios(tables, truth, start + timedelta(days=25 * 365))
    truth.paths = tables.write(Path(out_dir), gzip, patients)
    return truth
