"""The demo's synthetic world where clinical pretraining can matter: outcomes hinge on clinical concepts that
notes write in many surface forms, and the labelled notes are few.

    from clinpeft.demo.concepts import write_concept_world
    write_concept_world("demo-out/data", size="default", seed=0)   # corpus/discharge.csv.gz, tasks/{mor,pmv}/

The question of the paper (Gema et al. 2023): does adapting a general LLaMA to unlabelled clinical notes help
downstream when labelled notes are few? This world is built so that the answer is not given in advance:

* **Concepts and surface forms.** Twelve clinical concepts (`CONCEPTS`): six acute ones that raise the risk of
  an outcome (shock, liver failure, renal failure, respiratory failure, GI bleeding, cardiogenic shock) and six
  chronic ones that do not (diabetes, hypertension, reflux, ...). Each is written in 8-10 surface forms: its
  name, abbreviations (HRS, CRRT, P/F 90), drug names (Levophed, Xifaxan, Kayexalate), findings and numbers
  (asterixis, lactate 6.1), terms a general-English model has seen rarely and never tied to the outcome.
  A note that mentions a concept picks one of its forms at random, so each form is rare.
* **Labels from concepts, with noise.** A task's label is Bernoulli(sigmoid(bias + the weights of the
  concepts present + normal noise)) (`TASK_WEIGHTS`): it depends on which concepts a note mentions, never on
  the form; the noise keeps every AUROC well below 1 (the Bayes AUROC is `bayes_auroc`, ~0.89).
* **Few labelled notes, a larger unlabelled corpus.** The labelled train split is small (default 160 notes,
  ~15k tokens): each form appears in a handful of them, so a bag of words (the TF-IDF reference row) sees each
  form too rarely to learn it. The pretraining corpus (default 320 discharge summaries of other patients, ~52k
  tokens, 3.6x the labelled notes) is shaped like MIMIC's: the admission part written as the task notes are, then
  the hospital course that names every concept beside another of its forms ("Levophed (septic shock)"), then
  the discharge disposition (Expired / Home / Extended Care) drawn from the same risk model as the labels. A
  model adapted to it can learn that "Levophed", "on pressors" and "MAP 58 despite 3L IVF" mean the same
  thing and what follows them; a general model and a bag of words cannot know it from the labelled notes.

Admission notes are short (about 100 SmolLM2 tokens) with MIMIC-style section headers, de-identification
marks and distractors (denied symptoms, chronic conditions). The ids are the task ids of `synthetic.py`
(hadm_id = 100000 + 10 * patient); columns id, text, label, gender, age_group. Every draw comes from numpy
Generators seeded by (seed, stream): a seed gives the same files on every platform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clinpeft.data.definitions import age_group
from clinpeft.demo.synthetic import (
    CORPUS_COLUMNS,
    SUBGROUP_COLUMNS,
    TASK_COLUMNS,
    seeded_rng,
    write_csv,
    write_gzip_csv,
)

# notes per split and corpus notes; quick: the tiny-base pipeline check, default: the real-base demo
CONCEPT_SIZES = {
    "quick": {"train": 160, "val": 80, "test": 160, "corpus": 300},
    "default": {"train": 160, "val": 80, "test": 200, "corpus": 320},
    "full": {"train": 160, "val": 100, "test": 400, "corpus": 1600},
}
CONCEPT_TASKS = ("mor", "pmv")
_STREAM_NOTES, _STREAM_CORPUS = 21, 22
_DE_ID = "___"


@dataclass(frozen=True)
class Concept:
    key: str
    name: str  # the plain name the corpus explains forms with
    forms: tuple[str, ...]  # how notes write it: abbreviations, drugs, findings, numbers
    acute: bool


CONCEPTS: tuple[Concept, ...] = (
    Concept("shock", "septic shock", ("septic shock", "on pressors", "Levophed", "norepinephrine gtt",
                                      "vasopressin drip", "MAP 58 despite 3L IVF", "lactate 6.1", "Neo gtt",
                                      "pressor-dependent"), True),
    Concept("liver", "decompensated cirrhosis", ("decompensated cirrhosis", "HE", "lactulose", "Xifaxan", "SBP",
                                                 "MELD 31", "asterixis", "HRS", "tense ascites"), True),
    Concept("renal", "acute renal failure", ("acute renal failure", "CRRT", "CVVH", "anuric", "Kayexalate",
                                             "Cr 6.2 from 1.1", "ATN", "K 7.1", "uremic"), True),
    Concept("resp", "hypoxemic respiratory failure", ("respiratory failure", "BiPAP", "ARDS", "P/F 90",
                                                      "NRB 15L", "HFNC 60L", "FiO2 100%", "ABG 7.18/78",
                                                      "tripoding"), True),
    Concept("bleed", "upper GI bleed", ("upper GI bleed", "melena", "hematemesis", "Hgb 5.9", "2u pRBC",
                                        "octreotide", "pantoprazole gtt", "coffee-ground emesis", "EGD w/ clips"),
            True),
    Concept("cardiac", "cardiogenic shock", ("cardiogenic shock", "IABP", "Impella", "dobutamine", "milrinone",
                                             "EF 10%", "STEMI", "VT storm", "cool extremities"), True),
    Concept("diabetes", "diabetes", ("DM2", "metformin", "glipizide", "A1c 7.4", "Lantus", "FSBG 180s",
                                     "insulin SS"), False),
    Concept("htn", "hypertension", ("HTN", "lisinopril", "amlodipine", "HCTZ", "losartan", "Norvasc"), False),
    Concept("gerd", "reflux", ("GERD", "omeprazole", "Prilosec", "famotidine", "Pepcid", "PPI daily"), False),
    Concept("lipids", "hyperlipidemia", ("HLD", "atorvastatin", "Lipitor", "simvastatin", "LDL 130",
                                         "Crestor"), False),
    Concept("joints", "osteoarthritis", ("OA", "DJD", "meloxicam", "Tylenol prn", "crepitus", "tramadol"), False),
    Concept("thyroid", "hypothyroidism", ("hypothyroidism", "levothyroxine", "Synthroid", "TSH 5.2",
                                          "Levoxyl"), False),
)
BY_KEY = {c.key: c for c in CONCEPTS}

# log-odds of each task's outcome per concept present; bias and noise set the prevalence and cap the AUROC.
# Strong enough that knowing the concepts is worth much (Bayes AUROC ~0.89, TF-IDF ~0.68 on 160 train notes):
# the room clinical pretraining can fill is the gap between the two (docs/demo.md, "What was tried" 6)
TASK_WEIGHTS = {
    "mor": {"shock": 3.4, "liver": 2.9, "cardiac": 3.4, "bleed": 2.6, "renal": 1.8},
    "pmv": {"resp": 4.2, "shock": 2.6, "cardiac": 2.1, "renal": 1.6},
}
TASK_BIAS = {"mor": -3.4, "pmv": -3.1}
NOISE_SD = 0.7  # normal noise on the log-odds: what no note can tell
P_ACUTE, P_CHRONIC = 0.16, 0.3  # chance a note's patient has each acute / chronic concept


# ---------------------------------------------------------------------------------------------- patients


@dataclass
class Patient:
    age: int
    sex: str
    concepts: tuple[str, ...]  # keys, in CONCEPTS order
    noise: dict[str, float]  # per task: the log-odds noise


def draw_patient(rng: np.random.Generator) -> Patient:
    concepts = tuple(c.key for c in CONCEPTS if rng.random() < (P_ACUTE if c.acute else P_CHRONIC))
    return Patient(age=int(rng.integers(25, 95)), sex="F" if rng.random() < 0.5 else "M", concepts=concepts,
                   noise={t: float(rng.normal(0.0, NOISE_SD)) for t in CONCEPT_TASKS})


def risk_logit(patient: Patient, task: str) -> float:
    """The outcome's log-odds without the noise: what the concepts in the note could tell at best."""
    return TASK_BIAS[task] + sum(TASK_WEIGHTS[task].get(k, 0.0) for k in patient.concepts)


def outcome(rng: np.random.Generator, patient: Patient, task: str) -> int:
    z = risk_logit(patient, task) + patient.noise[task]
    return int(rng.random() < 1.0 / (1.0 + math.exp(-z)))


def bayes_auroc(n: int = 20_000, seed: int = 0, task: str = "mor") -> float:
    """The AUROC of the true risk (concepts only) on a large fresh sample: the ceiling any model can reach."""
    from sklearn.metrics import roc_auc_score

    rng = seeded_rng(seed, 99)
    patients = [draw_patient(rng) for _ in range(n)]
    y = [outcome(rng, p, task) for p in patients]
    return float(roc_auc_score(y, [risk_logit(p, task) for p in patients]))


# ---------------------------------------------------------------------------------------------- admission notes

_COMPLAINTS = ("weakness", "fatigue", "abdominal pain", "shortness of breath", "fever", "confusion", "fall",
               "chest pain", "nausea", "dizziness")
_DENIED = ("chest pain", "headache", "dysuria", "rash", "diarrhea", "cough", "palpitations", "leg swelling")
_EXAM = ("NAD", "A&Ox3", "RRR, no m/r/g", "CTAB", "soft, NT/ND", "no edema", "lethargic", "diaphoretic",
         "JVP 8cm", "bibasilar crackles")


def _mention(rng: np.random.Generator, key: str) -> str:
    forms = BY_KEY[key].forms
    return forms[int(rng.integers(len(forms)))]


def admission_note(rng: np.random.Generator, patient: Patient) -> str:
    """A short admission note: chronic concepts in the history and medications, acute ones in the present
    illness and the ED course, each by one random surface form; distractors around them."""
    chronic = [k for k in patient.concepts if not BY_KEY[k].acute]
    acute = [k for k in patient.concepts if BY_KEY[k].acute]
    pmh = ", ".join(_mention(rng, k) for k in chronic) or "none"
    acute_mentions = [_mention(rng, k) for k in acute]
    rng.shuffle(acute_mentions)
    complaint = _COMPLAINTS[int(rng.integers(len(_COMPLAINTS)))]
    denied = ", ".join(rng.choice(_DENIED, size=2, replace=False))
    exam = ", ".join(rng.choice(_EXAM, size=3, replace=False))
    hpi = f"{patient.age} y/o {patient.sex} w/ PMH {pmh} p/w {complaint}."
    if acute_mentions:
        hpi += f" In ED: {'; '.join(acute_mentions)}."
    hpi += f" Denies {denied}."
    return (f"CHIEF COMPLAINT: {complaint}\n\nPRESENT ILLNESS: {hpi}\n\nPHYSICAL EXAM: {exam}\n\n"
            f"SOCIAL HISTORY: lives with {_DE_ID}; {'former' if rng.random() < 0.5 else 'never'} smoker.")


# ---------------------------------------------------------------------------------------------- corpus

_EXPLAIN = ("{form} ({name})", "{form}, consistent with {name}", "{name} ({form})", "{form} in the setting of {name}")
_COURSE_BAD = ("Despite maximal support the patient continued to decline; family meeting held, made CMO.",
               "Course complicated by multiorgan failure; patient expired on hospital day {d}.")
_COURSE_GOOD = ("Improved with treatment and was transferred to the floor.", "Clinically improved; tolerating PO.")


def discharge_summary(rng: np.random.Generator, patient: Patient) -> str:
    """A corpus note of another patient, shaped like a MIMIC discharge summary: the admission part (written as
    the task notes are, each concept by one random form), then the hospital course that names every concept and
    explains another of its forms, then the disposition, which the same risk model as the tasks' labels draws
    (a discharge summary says who died; an admission note never does)."""
    died = outcome(rng, patient, "mor")
    vent_days = 2 + int(rng.integers(0, 5)) + (8 if outcome(rng, patient, "pmv") else 0)
    lines = [admission_note(rng, patient), "", "BRIEF HOSPITAL COURSE:"]
    for key in patient.concepts:
        concept = BY_KEY[key]
        template = _EXPLAIN[int(rng.integers(len(_EXPLAIN)))]
        lines.append("# " + template.format(form=_mention(rng, key), name=concept.name) + ".")
    if any(BY_KEY[k].acute for k in patient.concepts):
        lines.append(f"Intubated for {vent_days} days." if vent_days > 7 else "Not intubated.")
    course = _COURSE_BAD if died else _COURSE_GOOD
    lines += [course[int(rng.integers(len(course)))].format(d=int(rng.integers(2, 20))), "",
              f"DISCHARGE DISPOSITION: {'Expired' if died else ('Home' if rng.random() < 0.6 else 'Extended Care')}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- writing


def write_concept_world(out_dir: str | Path, size: str = "default", seed: int = 0,
                        tasks=CONCEPT_TASKS) -> dict:
    """out_dir/corpus/discharge.csv.gz (MIMIC-IV-Note columns) and out_dir/tasks/<task>/{train,val,test}.csv +
    labels.txt for each task (binary, "0"/"1"); returns {"corpus": {"discharge": path}, "tasks": {task: dir}}."""
    if size not in CONCEPT_SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(CONCEPT_SIZES)}")
    unknown = [t for t in tasks if t not in CONCEPT_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(CONCEPT_TASKS)}")
    sizes = CONCEPT_SIZES[size]
    out_dir = Path(out_dir)
    rng = seeded_rng(seed, _STREAM_NOTES)
    rows, n = [], 0
    for split in ("train", "val", "test"):
        for _ in range(sizes[split]):
            patient = draw_patient(rng)
            labels = {t: outcome(rng, patient, t) for t in CONCEPT_TASKS}
            rows.append((100_000 + 10 * n, admission_note(rng, patient), labels, patient.sex,
                         age_group(patient.age), split))
            n += 1
    task_dirs = {}
    for task in tasks:
        frame = pd.DataFrame([(i, text, str(lab[task]), sex, age, split) for i, text, lab, sex, age, split in rows],
                             columns=[*TASK_COLUMNS, *SUBGROUP_COLUMNS, "split"])
        task_dir = out_dir / "tasks" / task
        task_dir.mkdir(parents=True, exist_ok=True)
        for split in ("train", "val", "test"):
            write_csv(frame.loc[frame["split"] == split, [*TASK_COLUMNS, *SUBGROUP_COLUMNS]], task_dir / f"{split}.csv")
        (task_dir / "labels.txt").write_text("0\n1\n", encoding="utf-8")
        task_dirs[task] = task_dir

    corpus_rng = seeded_rng(seed, _STREAM_CORPUS)
    notes = []
    for i in range(sizes["corpus"]):
        subject, hadm = 10_000_000 + 7 * i, 20_000_000 + 11 * i
        text = discharge_summary(corpus_rng, draw_patient(corpus_rng))
        notes.append((f"{subject}-DS-1", subject, hadm, "DS", 1, "2150-01-01 00:00:00", "2150-01-02 10:00:00", text))
    corpus_dir = out_dir / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    discharge = corpus_dir / "discharge.csv.gz"
    write_gzip_csv(pd.DataFrame(notes, columns=list(CORPUS_COLUMNS)), discharge)
    return {"corpus": {"discharge": discharge}, "tasks": task_dirs}
