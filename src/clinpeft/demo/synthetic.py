"""Deterministic synthetic MIMIC-style data for the demo and the tests (no real patient data).

    from clinpeft.demo.synthetic import write_demo_data
    write_demo_data("demo_data", size="quick", seed=0)   # demo_data/corpus/*.csv.gz, demo_data/tasks/<task>/

Two products, shaped like the real inputs of the two steps of the paper:

* a pretraining corpus shaped like MIMIC-IV-Note v2.2: `discharge.csv.gz` (note_type DS, a few AD
  addenda) and `radiology.csv.gz` (RR, a few AR addenda), with MIMIC-IV's columns, id scheme,
  shifted dates (years 2110-2190), section headings and `___` de-identification marks;
* the five downstream tasks (LOS, MOR, PMV, DIAG, PROC) as van Aken et al. (2021) task directories:
  `{train,val,test}.csv` with columns `id,text,label` plus `labels.txt`, where the text is an
  admission note with van Aken's eight sections.

The latent patient model
------------------------
Every synthetic patient has a sex, an age, a frailty (standard normal) and a fixed set of chronic
conditions whose prevalence rises with age. Each of their 1-2 admissions draws one acute condition
as the reason for admission (sometimes a second one), from ~24 acute conditions whose frequency
depends on age and comorbidities (a COPD exacerbation needs COPD more often than not). Its latent
severity is frailty + age + comorbidity burden + what the acute conditions add + noise. Every
condition carries its ICD-9-CM diagnosis codes, the words notes use for it (synonyms and
abbreviations), complaints, history phrases, exam findings, medications and associated
procedures with their probabilities. The outcomes are drawn from the latent state, never from text:

* mechanical ventilation: Bernoulli(sigmoid(severity, respiratory involvement)); its duration is
  lognormal, longer when sicker; PMV = ventilated > 7 days. The PMV cohort is the ventilated
  admissions, a subset of the mortality cohort (as in BEEP).
* in-hospital death: Bernoulli(sigmoid(severity, conditions, age, ventilation)), ~13% prevalence.
* length of stay: lognormal in severity, conditions, ventilation; van Aken's 4 classes
  (<=3, 3-7, 7-14, >14 days); patients who died are left out of the LOS task, as van Aken does.
* diagnoses: the codes of every true condition (chronic ones are sometimes not coded), plus
  hospital-course codes the admission note cannot know (acidosis, palliative care, DNR, ...).
* procedures: drawn per condition, plus those that come with ventilation and an ICU stay.

The note is then written from the latent state through a noisy channel: a true condition is named
with some probability and under a random synonym, some true findings are left out, severity shows
only through noisy vitals, appearance and ED-course phrases, and distractors are added (denied
symptoms, ruled-out diagnoses, a copied-forward history item that is wrong). Death is never written
into a note. So a bag of words learns every task, but not perfectly: a TF-IDF + logistic regression
gets a test AUROC of roughly 0.65-0.9 per task at the "default" size (see tests/test_synthetic.py).

Everything is drawn from numpy Generators seeded by (seed, stream), never from Python's `hash` or
set order, so a seed gives byte-identical files on every platform for a given numpy version (the
gzip headers carry no mtime and no file name).

Ids and the patient split
-------------------------
Task ids are MIMIC-III-like hadm_ids that encode the patient: `hadm_id = 100000 + 10 * p + k` for
patient index p and admission k, so `subject_id_of(hadm_id)` recovers the subject and
`patient_split(n_patients, seed)` recovers the 70/10/20 patient split that every task shares.
Corpus ids follow MIMIC-IV (`subject_id` 10000000+, `hadm_id` 20000000+, `note_id` like
"10000032-DS-21"); corpus patients are other people than task patients, as MIMIC-IV notes and
MIMIC-III tasks are in the paper.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from clinpeft.data.definitions import (
    ADMISSION_SECTIONS,
    PMV_DAYS,
    SPLIT_FRACTIONS,
    TASKS,
    age_group,
    cut_dx_code,
    cut_proc_code,
    los_class,
)

SIZES = {  # patients per preset: quick for tests and a <2 min demo, default for a <10 min CPU demo
    "quick": {"corpus": 60, "tasks": 300},
    "default": {"corpus": 250, "tasks": 1000},
}
MIN_TASK_PATIENTS = 50  # below this the val split is too small to hold every class

CORPUS_COLUMNS = ("note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text")
SUBGROUP_COLUMNS = ("gender", "age_group")  # extra task CSV columns: `clinpeft report --subgroups gender,age_group`
TASK_COLUMNS = ("id", "text", "label")

# Independent random streams, so that e.g. changing the note wording never moves the split.
_STREAM_TASK_COHORT, _STREAM_SPLIT, _STREAM_TASK_TEXT = 1, 2, 3
_STREAM_CORPUS_COHORT, _STREAM_CORPUS_TEXT = 11, 12
_TASK_HADM_BASE = 100_000  # MIMIC-III hadm_ids are 6-digit
_MAX_ADMISSIONS = 2  # per task patient; the id scheme leaves room for 10
_DE_ID = "___"


# --------------------------------------------------------------------------------------------
# Conditions: the vocabulary of the latent patient model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Condition:
    key: str
    acute: bool  # acute: a reason for admission; chronic: a comorbidity in the history
    dx: tuple[str, ...]  # ICD-9-CM diagnosis codes as MIMIC stores them (no dot); first = principal
    names: tuple[str, ...]  # how notes name it: synonyms and abbreviations
    weight: float  # acute: relative frequency as reason for admission; chronic: prevalence at 65
    age_slope: float = 0.3  # per decade above 65: log-weight (acute) or log-odds (chronic)
    complaints: tuple[str, ...] = ()
    hpi: tuple[str, ...] = ()
    exam: tuple[str, ...] = ()  # "System: finding"
    meds: tuple[str, ...] = ()  # one slot per drug; "A|B" = alternatives, one is taken
    treat: tuple[str, ...] = ()
    procs: tuple[tuple[str, float], ...] = ()  # (ICD-9 procedure code, probability)
    study: tuple[str, str, str] | None = None  # (radiology study, finding, impression)
    sev: float = 0.0  # added to latent severity
    mort: float = 0.0  # added to the log-odds of in-hospital death
    los: float = 0.0  # added to log length of stay
    resp: float = 0.0  # respiratory involvement: drives ventilation and its duration
    febrile: bool = False
    service: str = "MEDICINE"
    needs: str = ""  # chronic key that makes this acute condition 5x likelier


def _acute(key, dx, names, weight, **kw) -> _Condition:
    return _Condition(key, True, dx, names, weight, **kw)


def _chronic(key, dx, names, weight, **kw) -> _Condition:
    return _Condition(key, False, dx, names, weight, **kw)


_ACUTE: tuple[_Condition, ...] = (
    _acute("sepsis", ("0389", "99591"), ("sepsis", "urosepsis", "SIRS/sepsis", "sepsis of unclear source"), 1.2,
           complaints=("fever", "fevers and chills", "hypotension", "altered mental status"),
           hpi=("found to be febrile to 102.3 with rigors", "lactate 3.8 on arrival", "blood cultures drawn x2",
                "WBC 18.2 with bandemia", "started on vanc/zosyn in the ED"),
           exam=("Skin: warm and flushed", "HEENT: dry mucous membranes"),
           treat=("IV vancomycin and piperacillin-tazobactam", "broad spectrum abx and IVF"),
           procs=(("3893", 0.45), ("0331", 0.06)),
           study=("cxr_port", "Low lung volumes without focal consolidation.", "No acute cardiopulmonary process."),
           sev=0.7, mort=0.7, los=0.3, resp=0.35, febrile=True),
    _acute("pneumonia", ("486",), ("pneumonia", "PNA", "CAP", "multifocal pneumonia", "RLL pneumonia"), 1.3,
           complaints=("cough", "shortness of breath", "fever", "SOB"),
           hpi=("productive cough with yellow sputum x3 days", "CXR with RLL consolidation", "new 3L O2 requirement",
                "started on ceftriaxone/azithromycin", "pleuritic chest pain with deep inspiration"),
           exam=("Lungs: crackles at R base", "Lungs: rhonchi bilaterally", "Lungs: decreased BS at L base"),
           meds=("Levofloxacin 750 mg PO Q24H x 4 days",), treat=("ceftriaxone and azithromycin", "levofloxacin"),
           procs=(("3322", 0.08), ("3491", 0.08)),
           study=("cxr", "Focal consolidation in the right lower lobe.", "Right lower lobe pneumonia."),
           sev=0.2, mort=0.3, los=0.15, resp=0.8, febrile=True),
    _acute("chf_exac", ("42823", "4280"),
           ("CHF exacerbation", "acute on chronic diastolic CHF", "decompensated heart failure", "acute systolic CHF"),
           1.1, complaints=("dyspnea on exertion", "leg swelling", "SOB", "weight gain"),
           hpi=("3-pillow orthopnea and PND", "weight up 8 lbs over 2 weeks", "BNP 2450",
                "dietary indiscretion with salty food", "received IV lasix 40 mg in the ED"),
           exam=("Neck: JVP to angle of jaw", "Lungs: bibasilar crackles", "Ext: 2+ pitting edema to knees",
                 "CV: S3 present"),
           meds=("Furosemide 80 mg PO BID",), treat=("IV lasix diuresis", "a lasix gtt"),
           procs=(("8872", 0.5), ("3491", 0.1)),
           study=("cxr", "Moderate pulmonary edema with small bilateral pleural effusions.",
                  "Moderate pulmonary edema."),
           sev=0.2, mort=0.3, los=0.25, resp=0.35, needs="chf", service="CARDIOLOGY"),
    _acute("mi", ("41071", "41401"), ("NSTEMI", "STEMI", "ACS", "acute MI"), 1.0, age_slope=0.2,
           complaints=("chest pain", "chest pressure", "substernal chest pain"),
           hpi=("substernal chest pressure radiating to L arm", "troponin 1.8", "ST depressions in V4-V6",
                "given ASA 325 and started on heparin gtt", "diaphoretic with exertion"),
           exam=("Skin: diaphoretic", "CV: RRR, soft systolic murmur"),
           meds=("Clopidogrel 75 mg PO DAILY", "Atorvastatin 80 mg PO QPM"),
           treat=("heparin gtt and cardiac cath", "DES to the LAD"),
           procs=(("3722", 0.6), ("8856", 0.6), ("0066", 0.45), ("3607", 0.4), ("0045", 0.35), ("8872", 0.4)),
           sev=0.1, mort=0.3, los=0.0, resp=0.1, service="CARDIOLOGY"),
    _acute("gib", ("5789", "2851"), ("GI bleed", "UGIB", "upper GI bleed", "LGIB", "GIB"), 0.9,
           complaints=("melena", "hematemesis", "BRBPR", "dark stools"),
           hpi=("black tarry stools x2 days", "Hct 21 from baseline 34", "guaiac positive in the ED",
                "on aspirin and plavix", "received 2 units pRBC in the ED"),
           exam=("Rectal: melena on rectal exam", "HEENT: pale conjunctivae", "Rectal: guaiac positive brown stool"),
           meds=("Pantoprazole 40 mg PO Q12H",),
           treat=("IV PPI and transfusion", "EGD with clipping of a bleeding ulcer"),
           procs=(("4513", 0.75), ("9904", 0.7), ("4516", 0.2)),
           sev=0.2, mort=0.25, los=0.05, resp=0.05),
    _acute("stroke", ("43491", "34290"), ("CVA", "acute ischemic stroke", "L MCA stroke", "stroke"), 0.7, age_slope=0.4,
           complaints=("left-sided weakness", "slurred speech", "facial droop", "word finding difficulty"),
           hpi=("last known well at 8pm", "NIHSS 12 in the ED", "CT head without hemorrhage", "code stroke called",
                "outside the window for tPA"),
           exam=("Neuro: R facial droop", "Neuro: L arm drift", "Neuro: dysarthric", "Neuro: 4/5 strength LUE"),
           meds=("Aspirin 325 mg PO DAILY",), treat=("aspirin and permissive HTN", "stroke workup with MRI and TTE"),
           procs=(("4311", 0.15),),
           study=("ct_head", "Hypodensity in the left MCA territory with loss of gray-white differentiation.",
                  "Evolving left MCA infarct."),
           sev=0.4, mort=0.6, los=0.45, resp=0.3, service="NEUROLOGY"),
    _acute("ich", ("431",), ("ICH", "intraparenchymal hemorrhage", "IPH", "hemorrhagic stroke"), 0.35, age_slope=0.3,
           complaints=("headache", "unresponsive", "confusion"),
           hpi=("CT head with 3 cm L basal ganglia bleed", "on coumadin with INR 3.4", "BP 210/110 on arrival",
                "GCS 8 at OSH"),
           exam=("Neuro: pupils sluggish", "Neuro: not following commands", "Neuro: L hemiparesis"),
           treat=("reversal of anticoagulation and BP control", "nicardipine gtt"),
           procs=(("9604", 0.4), ("0331", 0.04)),
           study=("ct_head", "Intraparenchymal hemorrhage in the left basal ganglia with surrounding edema.",
                  "Acute left basal ganglia hemorrhage."),
           sev=1.0, mort=1.2, los=0.5, resp=0.7, service="NEUROSURGERY"),
    _acute("copd_exac", ("49121",), ("COPD exacerbation", "AECOPD", "COPD flare"), 0.8,
           complaints=("SOB", "wheezing", "cough"),
           hpi=("increased sputum production", "on home O2 2L NC", "nebs x3 in the ED without relief",
                "solumedrol 125 mg IV given"),
           exam=("Lungs: diffuse expiratory wheezes", "Lungs: prolonged expiratory phase", "Lungs: poor air movement",
                 "GEN: accessory muscle use"),
           meds=("PredniSONE 40 mg PO DAILY x 3 days",), treat=("nebs, steroids and azithromycin", "prednisone taper"),
           procs=(("9390", 0.35), ("9604", 0.08)),
           study=("cxr", "Hyperinflated lungs with flattened diaphragms.", "Emphysema without acute process."),
           sev=0.2, mort=0.2, los=0.1, resp=0.9, needs="copd"),
    _acute("dka", ("25013",), ("DKA", "diabetic ketoacidosis"), 0.45, age_slope=-0.6,
           complaints=("nausea/vomiting", "polyuria", "abdominal pain"),
           hpi=("BG 560 with AG 26", "missed insulin doses", "started on insulin gtt", "serum ketones positive"),
           exam=("HEENT: dry mucous membranes", "Lungs: Kussmaul respirations"),
           meds=("Glargine 24 units SC qHS",), treat=("insulin gtt and IVF", "insulin gtt until gap closed"),
           sev=0.1, mort=-0.3, los=-0.25, resp=0.0),
    _acute("aki", ("5849",), ("AKI", "acute renal failure", "ARF", "acute kidney injury"), 0.6,
           complaints=("decreased urine output", "weakness", "abnormal labs"),
           hpi=("Cr 3.8 from baseline 1.1", "K 6.1 on labs", "poor PO intake for a week", "on lisinopril and NSAIDs"),
           exam=("HEENT: dry mucous membranes", "Neck: flat JVP"),
           treat=("IVF and holding nephrotoxins", "renal consult and HD"), procs=(("3995", 0.25), ("3895", 0.15)),
           study=("renal_us", "No hydronephrosis. Echogenic kidneys.", "Medical renal disease without hydronephrosis."),
           sev=0.2, mort=0.2, los=0.2, resp=0.0),
    _acute("resp_failure", ("51881",),
           ("hypoxic respiratory failure", "acute respiratory failure", "hypercarbic respiratory failure",
            "resp failure"), 0.6,
           complaints=("respiratory distress", "hypoxia", "SOB"),
           hpi=("ABG 7.19/72/58", "satting 78% on RA", "placed on BiPAP in the field", "tachypneic to the 40s"),
           exam=("GEN: accessory muscle use", "Lungs: tachypneic with coarse breath sounds"),
           treat=("mechanical ventilation and diuresis", "BiPAP then intubation"),
           procs=(("9604", 0.6), ("3891", 0.35)),
           study=("cxr_port", "Diffuse bilateral airspace opacities.", "Bilateral opacities concerning for ARDS."),
           sev=0.9, mort=0.6, los=0.35, resp=1.6),
    _acute("pancreatitis", ("5770",), ("acute pancreatitis", "gallstone pancreatitis", "pancreatitis"), 0.45,
           age_slope=-0.3,
           complaints=("epigastric pain", "abdominal pain", "nausea/vomiting"),
           hpi=("lipase 2850", "pain radiating to the back", "heavy EtOH use",
                "CT abd with peripancreatic fat stranding"),
           exam=("Abd: epigastric tenderness", "Abd: voluntary guarding", "Abd: hypoactive BS"),
           treat=("bowel rest, IVF and pain control", "aggressive IVF"), procs=(("5110", 0.3), ("9915", 0.12)),
           study=("ct_abd", "Peripancreatic fat stranding and fluid without necrosis.",
                  "Acute interstitial pancreatitis."),
           sev=0.2, mort=0.1, los=0.35, resp=0.15),
    _acute("hepatic_enceph", ("5722", "5715"), ("hepatic encephalopathy", "decompensated cirrhosis", "ESLD", "HE"),
           0.55, complaints=("confusion", "abdominal distension", "jaundice"),
           hpi=("asterixis on exam", "not taking lactulose", "MELD 28", "ammonia 145"),
           exam=("Neuro: asterixis", "Skin: jaundiced", "HEENT: scleral icterus", "Abd: tense ascites"),
           meds=("Lactulose 30 mL PO TID", "Rifaximin 550 mg PO BID"),
           treat=("lactulose and rifaximin", "therapeutic paracentesis"),
           procs=(("5491", 0.55), ("4513", 0.25)),
           study=("ruq_us", "Nodular liver contour with moderate ascites.", "Cirrhotic liver with ascites."),
           sev=0.4, mort=0.7, los=0.25, resp=0.1, needs="cirrhosis"),
    _acute("uti", ("5990",), ("UTI", "pyelonephritis", "cystitis", "urinary tract infection"), 0.8,
           complaints=("dysuria", "flank pain", "fever", "confusion"),
           hpi=("UA with >100 WBC", "urine culture pending", "foul-smelling urine", "CVA tenderness"),
           exam=("Back: CVA tenderness", "Abd: suprapubic tenderness"),
           meds=("Cefpodoxime 200 mg PO Q12H x 5 days",), treat=("ceftriaxone", "IV ceftriaxone then PO cefpodoxime"),
           sev=-0.2, mort=-0.3, los=-0.2, resp=0.0, febrile=True),
    _acute("cellulitis", ("6826",), ("cellulitis", "LLE cellulitis", "RLE cellulitis"), 0.6, age_slope=-0.1,
           complaints=("leg redness", "leg swelling", "leg pain"),
           hpi=("erythema spreading past marked borders", "started on IV vancomycin", "no fluctuance",
                "failed outpatient keflex"),
           exam=("Ext: erythema and warmth LLE", "Ext: tender to palpation, no fluctuance"),
           meds=("Cephalexin 500 mg PO Q6H x 7 days",), treat=("IV vancomycin", "vanc then PO keflex"),
           sev=-0.3, mort=-0.6, los=-0.1, resp=0.0, febrile=True),
    _acute("pe", ("41519",), ("PE", "pulmonary embolism", "saddle PE", "segmental PE"), 0.45,
           complaints=("pleuritic chest pain", "SOB", "hemoptysis"),
           hpi=("CTA chest with R segmental PE", "recent long flight", "started on heparin gtt", "tachycardic to 120s"),
           exam=("CV: tachycardic", "Ext: LLE swelling"),
           meds=("Apixaban 10 mg PO BID x 7 days",), treat=("heparin gtt then apixaban", "anticoagulation"),
           procs=(("3879", 0.2), ("8872", 0.3)),
           study=("cta_chest", "Filling defect in a right lower lobe segmental pulmonary artery.",
                  "Right segmental pulmonary embolism."),
           sev=0.2, mort=0.3, los=0.05, resp=0.45),
    _acute("syncope", ("7802",), ("syncope", "vasovagal syncope", "presyncope"), 0.6, age_slope=0.3,
           complaints=("syncope", "fall", "lightheadedness", "LOC"),
           hpi=("brief LOC while standing", "no prodrome", "no tongue biting or incontinence", "orthostatic in the ED"),
           exam=("CV: orthostatic", "Neuro: no focal deficits"),
           treat=("telemetry and TTE", "IVF and monitoring on tele"), procs=(("8872", 0.3),),
           study=("ct_head", "", "No acute intracranial process."),
           sev=-0.4, mort=-0.8, los=-0.5, resp=0.0),
    _acute("hip_fx", ("82021", "E8889", "E8497"),
           ("hip fracture", "L femoral neck fracture", "R intertrochanteric fracture", "hip fx"), 0.5, age_slope=0.8,
           complaints=("fall", "hip pain", "inability to bear weight"),
           hpi=("mechanical fall at home", "R leg shortened and externally rotated",
                "XR with displaced femoral neck fx", "ortho consulted"),
           exam=("Ext: L leg shortened and externally rotated", "Ext: pain with ROM of hip"),
           meds=("Enoxaparin 40 mg SC DAILY x 4 weeks", "OxyCODONE 5 mg PO Q4H:PRN pain"),
           treat=("ORIF by ortho", "hemiarthroplasty"),
           procs=(("7935", 0.6), ("8151", 0.3), ("9904", 0.3)),
           study=("hip_xr", "Displaced subcapital femoral neck fracture.", "Acute femoral neck fracture."),
           sev=0.0, mort=0.1, los=0.5, resp=0.0, service="ORTHOPAEDICS"),
    _acute("cdiff", ("00845",), ("C diff colitis", "C. difficile infection", "CDI"), 0.45,
           complaints=("diarrhea", "abdominal pain", "fever"),
           hpi=("8-10 loose watery BMs/day", "recent course of clindamycin", "C diff toxin positive",
                "started on PO vanc"),
           exam=("Abd: diffuse tenderness", "Abd: hyperactive BS"),
           meds=("Vancomycin Oral Liquid 125 mg PO Q6H x 10 days",), treat=("PO vancomycin", "PO vanc and IVF"),
           sev=0.1, mort=0.1, los=0.15, resp=0.0, febrile=True),
    _acute("cardiac_arrest", ("4275",), ("cardiac arrest", "VF arrest", "PEA arrest", "out of hospital arrest"), 0.25,
           complaints=("unresponsive", "cardiac arrest"),
           hpi=("found down at home", "CPR for 20 minutes with ROSC", "shocked x3 for VF",
                "cooling protocol initiated"),
           exam=("GEN: intubated, sedated", "Neuro: pupils minimally reactive", "Neuro: not following commands"),
           treat=("targeted temperature management", "cooling protocol and cath"),
           procs=(("9604", 0.7), ("9960", 0.6), ("9962", 0.5), ("3891", 0.5)),
           sev=1.5, mort=1.5, los=0.3, resp=1.8, service="CARDIOLOGY"),
    _acute("afib_rvr", ("42731",), ("AF with RVR", "afib with RVR", "rapid atrial fibrillation"), 0.6,
           complaints=("palpitations", "SOB", "chest pain"),
           hpi=("HR 150s in an irregularly irregular rhythm", "started on dilt gtt", "missed metoprolol doses",
                "CHADS2 3"),
           exam=("CV: irregularly irregular", "CV: tachycardic"),
           meds=("Metoprolol Succinate XL 100 mg PO DAILY",), treat=("dilt gtt then PO metoprolol", "rate control"),
           procs=(("9962", 0.2), ("8872", 0.4)), sev=-0.1, mort=-0.3, los=-0.15, resp=0.05, needs="afib",
           service="CARDIOLOGY"),
    _acute("overdose", ("9694", "E9503"),
           ("overdose", "intentional ingestion", "polysubstance ingestion", "tox ingestion"), 0.35, age_slope=-0.8,
           complaints=("ingestion", "altered mental status", "unresponsive"),
           hpi=("found with empty pill bottles", "tox screen positive for benzos", "poison control contacted",
                "psych to evaluate"),
           exam=("Neuro: somnolent", "HEENT: pinpoint pupils"),
           treat=("supportive care and tox consult", "observation and psych evaluation"),
           procs=(("9604", 0.35),), sev=0.2, mort=-0.4, los=-0.3, resp=0.7),
    _acute("hyponatremia", ("2761",), ("hyponatremia", "SIADH", "hypo-Na"), 0.45, age_slope=0.5,
           complaints=("confusion", "weakness", "fall"),
           hpi=("Na 118 on labs", "on HCTZ", "poor solute intake", "beer potomania"),
           exam=("GEN: mildly confused", "Neck: euvolemic on exam"),
           treat=("fluid restriction", "hypertonic saline with q4h Na checks"),
           sev=0.0, mort=-0.1, los=0.0, resp=0.0),
    _acute("neutropenic_fever", ("28803", "1629"), ("neutropenic fever", "febrile neutropenia"), 0.35,
           complaints=("fever", "weakness"),
           hpi=("ANC 200 on day 10 after chemo", "recent cycle of carboplatin", "started on cefepime", "port in place"),
           exam=("HEENT: oral mucositis", "Skin: port site c/d/i"),
           treat=("cefepime and G-CSF", "empiric cefepime"), procs=(("9925", 0.3), ("9904", 0.35)),
           study=("cxr", "Right hilar mass, unchanged.", "Known right hilar mass without new consolidation."),
           sev=0.4, mort=0.6, los=0.5, resp=0.2, febrile=True, needs="met_cancer", service="ONCOLOGY"),
)

_CHRONIC: tuple[_Condition, ...] = (
    _chronic("htn", ("4019",), ("HTN", "hypertension"), 0.5,
             meds=("Lisinopril 10 mg PO DAILY|Losartan 50 mg PO DAILY", "Amlodipine 5 mg PO DAILY",
                   "Hydrochlorothiazide 25 mg PO DAILY")),
    _chronic("hld", ("2724",), ("HLD", "hyperlipidemia", "high cholesterol"), 0.35,
             meds=("Atorvastatin 40 mg PO QPM|Simvastatin 20 mg PO QPM|Rosuvastatin 10 mg PO QPM",)),
    _chronic("dm2", ("25000", "V5867"), ("DM2", "type 2 diabetes", "NIDDM", "insulin-dependent DM"), 0.25,
             meds=("MetFORMIN (Glucophage) 1000 mg PO BID", "Glargine 20 units SC qHS", "Humalog sliding scale")),
    _chronic("cad", ("41401", "V4581"), ("CAD", "coronary artery disease", "CAD s/p CABG", "CAD s/p PCI"), 0.2,
             meds=("Aspirin 81 mg PO DAILY", "Clopidogrel 75 mg PO DAILY", "Metoprolol Tartrate 25 mg PO BID"),
             mort=0.15),
    _chronic("afib", ("42731", "V5861"), ("afib", "AF", "paroxysmal atrial fibrillation"), 0.15, age_slope=0.6,
             meds=("Warfarin 5 mg PO DAILY16|Apixaban 5 mg PO BID|Rivaroxaban 20 mg PO DAILY",
                   "Diltiazem 120 mg PO DAILY|Metoprolol Succinate XL 50 mg PO DAILY"),
             exam=("CV: irregularly irregular",), mort=0.1),
    _chronic("ckd", ("5853", "40390"), ("CKD", "CKD stage III", "chronic kidney disease"), 0.15,
             meds=("Calcitriol 0.25 mcg PO DAILY", "Sevelamer 800 mg PO TID"), mort=0.25, los=0.1),
    _chronic("copd", ("496",), ("COPD", "emphysema", "chronic bronchitis"), 0.12,
             meds=("Tiotropium Bromide 1 CAP IH DAILY", "Albuterol Inhaler 2 PUFF IH Q4H:PRN SOB",
                   "Fluticasone-Salmeterol Diskus 250/50 1 INH IH BID"),
             exam=("Lungs: distant breath sounds",), mort=0.2, resp=0.5),
    _chronic("chf", ("4280",), ("CHF", "HFrEF", "HFpEF", "systolic CHF EF 30%"), 0.12, age_slope=0.5,
             meds=("Furosemide 40 mg PO DAILY", "Carvedilol 6.25 mg PO BID", "Spironolactone 25 mg PO DAILY"),
             exam=("Ext: 1+ bilateral LE edema",), mort=0.35, los=0.1, resp=0.2),
    _chronic("hypothyroid", ("2449",), ("hypothyroidism", "hypothyroid"), 0.12,
             meds=("Levothyroxine Sodium 75 mcg PO DAILY",)),
    _chronic("depression", ("311",), ("depression", "MDD", "anxiety/depression"), 0.15, age_slope=-0.2,
             meds=("Sertraline 50 mg PO DAILY|Citalopram 20 mg PO DAILY|Escitalopram 10 mg PO DAILY",
                   "Trazodone 50 mg PO QHS:PRN insomnia")),
    _chronic("gerd", ("53081",), ("GERD", "reflux"), 0.15,
             meds=("Omeprazole 20 mg PO DAILY|Pantoprazole 40 mg PO Q24H",)),
    _chronic("obesity", ("27800",), ("obesity", "morbid obesity, BMI 42"), 0.1, age_slope=-0.2),
    _chronic("anemia", ("2859",), ("chronic anemia", "anemia"), 0.1, meds=("Ferrous Sulfate 325 mg PO DAILY",),
             los=0.1),
    _chronic("tobacco", ("3051",), ("tobacco use", "active smoker", "tobacco abuse"), 0.15, age_slope=-0.4, mort=0.1,
             resp=0.1),
    _chronic("alcohol", ("30390",), ("EtOH abuse", "alcohol use disorder", "EtOH dependence"), 0.08, age_slope=-0.4,
             meds=("Thiamine 100 mg PO DAILY", "Folic Acid 1 mg PO DAILY"), mort=0.2),
    _chronic("dementia", ("2948", "3310"), ("dementia", "Alzheimer's dementia", "baseline dementia"), 0.05,
             age_slope=1.2, meds=("Donepezil 10 mg PO QHS", "Memantine 10 mg PO BID"),
             exam=("Neuro: oriented to self only",), mort=0.5, los=0.15),
    _chronic("met_cancer", ("1977", "1629"), ("metastatic lung cancer", "NSCLC with liver mets", "metastatic cancer"),
             0.06, meds=("OxyCODONE 5 mg PO Q6H:PRN pain", "Dexamethasone 4 mg PO BID"), mort=1.0, los=0.2),
    _chronic("cirrhosis", ("5715", "07054"), ("HCV cirrhosis", "cirrhosis", "EtOH cirrhosis"), 0.05, age_slope=-0.1,
             meds=("Lactulose 30 mL PO TID", "Spironolactone 100 mg PO DAILY"), exam=("Skin: spider angiomata",),
             mort=0.5, los=0.15),
    _chronic("hiv", ("042",), ("HIV", "HIV on HAART", "AIDS"), 0.03, age_slope=-0.6,
             meds=("Bictegravir-Emtricitabine-Tenofovir 1 TAB PO DAILY",), mort=0.3),
    _chronic("osa", ("32723",), ("OSA", "OSA on CPAP"), 0.07, resp=0.2),
    _chronic("bph", ("60000",), ("BPH",), 0.12, age_slope=0.6, meds=("Tamsulosin 0.4 mg PO QHS",)),
)
_CHRONIC_BY_KEY = {c.key: c for c in _CHRONIC}

# Hospital-course diagnosis codes that an admission note cannot know: they blur DIAG like reality.
_COURSE_DX = ("2762", "2639", "7070", "2875", "E8788", "E9342", "V667", "V4986", "78552", "V1582")

# Procedures done for reasons the admission note does not hold (each at a small base rate).
_BACKGROUND_PROCS = ("8872", "3893", "9904", "3491", "5491", "4513", "0331", "3995", "9915")

# Names for the discharge summary's "Major Surgical or Invasive Procedure:" section.
_PROC_NAMES = {
    "9671": "mechanical ventilation", "9672": "mechanical ventilation >96 hours", "9604": "endotracheal intubation",
    "9390": "BiPAP", "3893": "central venous line placement", "3891": "arterial line placement",
    "3895": "tunneled HD catheter placement", "9904": "transfusion of pRBCs", "9915": "TPN",
    "966": "enteral tube feeds",
    "3995": "hemodialysis", "4513": "EGD", "4516": "EGD with biopsy", "5491": "paracentesis", "3491": "thoracentesis",
    "3722": "cardiac catheterization", "8856": "coronary angiography", "0066": "PCI", "0045": "stent placement",
    "3607": "drug-eluting stent", "8872": "transthoracic echo", "0331": "lumbar puncture", "3322": "bronchoscopy",
    "3129": "tracheostomy", "4311": "PEG tube placement", "7935": "ORIF of hip", "8151": "hip arthroplasty",
    "9925": "chemotherapy", "5110": "ERCP", "3879": "IVC filter placement", "9960": "CPR", "9962": "cardioversion",
}


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


def seeded_rng(seed: int, *stream: int) -> np.random.Generator:
    """One independent, platform-stable random stream per (seed, purpose)."""
    return np.random.default_rng([int(seed), *stream])


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def _some(rng: np.random.Generator, seq: Sequence, p: float) -> list:
    """Each item kept independently with probability p, in order."""
    return [x for x in seq if rng.random() < p]


def dedupe(items: Iterable[str]) -> list[str]:
    """Drop repeats, keep first-seen order (dict order, never set order: determinism)."""
    return list(dict.fromkeys(items))


def subject_id_of(hadm_id: int) -> int:
    """The subject of a synthetic task admission (ids encode it: hadm_id = 100000 + 10*p + k)."""
    return (int(hadm_id) - _TASK_HADM_BASE) // 10 + 1


def patient_split(n_patients: int, seed: int = 0) -> list[str]:
    """Split of each task patient index ("train" / "val" / "test"), 70/10/20, as `write_tasks` uses it."""
    order = seeded_rng(seed, _STREAM_SPLIT).permutation(n_patients)
    n_train = round(SPLIT_FRACTIONS[0] * n_patients)
    n_val = round(SPLIT_FRACTIONS[1] * n_patients)
    split = ["test"] * n_patients
    for rank, p in enumerate(order):
        split[int(p)] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return split


def write_gzip_csv(df: pd.DataFrame, path: Path) -> None:
    # mtime=0 and no file name in the header: same bytes for the same seed
    data = df.to_csv(index=False, lineterminator="\n").encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        gz.write(data)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    path.write_bytes(df.to_csv(index=False, lineterminator="\n").encode("utf-8"))


# --------------------------------------------------------------------------------------------
# The latent patient model
# --------------------------------------------------------------------------------------------


@dataclass
class _Admission:
    patient: int  # patient index in its cohort
    subject_id: int
    hadm_id: int
    sex: str  # "M" / "F"
    age: int
    reason: _Condition  # why the patient came in (the principal diagnosis)
    acute: list[_Condition]  # acute[0] is the reason; in a documented view, only what the note knows
    chronic: list[_Condition]
    severity: float  # latent; roughly standard normal
    resp: float  # respiratory involvement
    vent: bool
    vent_days: float
    died: bool
    los_days: float
    dx: list[str]  # full ICD-9 diagnosis codes in coding order
    procs: list[str]  # full ICD-9 procedure codes in coding order


def _draw_chronic(rng: np.random.Generator, age: int, sex: str) -> list[_Condition]:
    out = []
    for c in _CHRONIC:
        if c.key == "bph" and sex == "F":
            continue
        logit = math.log(c.weight / (1 - c.weight)) + c.age_slope * (age - 65) / 10
        if rng.random() < _sigmoid(logit):
            out.append(c)
    return out


def _draw_acute(rng: np.random.Generator, age: int, chronic_keys: Sequence[str],
                exclude: Sequence[str] = ()) -> _Condition:
    w = np.array([
        0.0 if c.key in exclude else
        c.weight * math.exp(c.age_slope * (age - 65) / 10) * (5.0 if c.needs and c.needs in chronic_keys else 1.0)
        for c in _ACUTE
    ])
    return _ACUTE[int(rng.choice(len(_ACUTE), p=w / w.sum()))]


def _draw_admission(rng: np.random.Generator, patient: int, sex: str, age: int, frailty: float,
                    chronic: list[_Condition]) -> _Admission:
    chronic_keys = [c.key for c in chronic]
    acute = [_draw_acute(rng, age, chronic_keys)]
    if rng.random() < 0.25:  # a second acute problem
        acute.append(_draw_acute(rng, age, chronic_keys, exclude=[acute[0].key]))

    severity = (0.45 * frailty + 0.015 * (age - 65) + 0.1 * (len(chronic) - 2)
                + sum(c.sev for c in acute) + rng.normal(0, 0.8) - 0.3)
    resp = sum(c.resp for c in acute) + 0.4 * sum(c.resp for c in chronic)

    vent = rng.random() < _sigmoid(-1.5 + 1.1 * severity + 1.6 * resp)
    # long ventilation: sicker, more lung involvement, and conditions that keep people in (ICH, arrest)
    vent_mu = 0.6 + 0.5 * severity + 0.3 * resp + 1.2 * sum(c.los for c in acute)
    vent_days = float(math.exp(rng.normal(vent_mu, 0.6))) if vent else 0.0

    mort_logit = (-3.3 + 0.9 * severity + sum(c.mort for c in acute) + 0.6 * sum(c.mort for c in chronic)
                  + 0.03 * (age - 65) + 0.6 * vent)
    died = bool(rng.random() < _sigmoid(mort_logit))

    log_los = (1.45 + 0.3 * severity + sum(c.los for c in acute) + 0.6 * sum(c.los for c in chronic)
               + (0.45 * math.log1p(vent_days) if vent else 0.0) + 0.004 * (age - 65) + rng.normal(0, 0.4))
    los_days = max(0.2, math.exp(log_los))

    return _Admission(patient, 0, 0, sex, age, acute[0], acute, chronic, float(severity), float(resp), bool(vent),
                      vent_days, died, los_days, _code_diagnoses(rng, acute, chronic, severity, age, died),
                      _code_procedures(rng, acute, severity, vent, vent_days))


def _code_diagnoses(rng: np.random.Generator, acute: list[_Condition], chronic: list[_Condition],
                    severity: float, age: int, died: bool) -> list[str]:
    codes = []
    for i, c in enumerate(acute):  # principal diagnosis first, like SEQ_NUM 1
        codes += [c.dx[0]] + _some(rng, c.dx[1:], 0.6 if i == 0 else 0.4)
    for c in chronic:  # coders miss some comorbidities
        if rng.random() < 0.8:
            codes += [c.dx[0]] + _some(rng, c.dx[1:], 0.5)
    keys = [c.key for c in acute + chronic]
    # hospital-course codes, tied to the latent state, not to anything in the admission note
    p = {
        "2762": _sigmoid(-2.0 + 1.2 * severity), "2639": _sigmoid(-3.0 + 0.8 * severity),
        "7070": _sigmoid(-3.2 + 0.05 * (age - 65) + 0.5 * severity), "2875": _sigmoid(-2.6 + 0.6 * severity),
        "E8788": 0.05, "E9342": 0.25 if "afib" in keys else 0.02, "V667": 0.45 if died else 0.02,
        "V4986": _sigmoid(-3.0 + 0.08 * (age - 65) + 0.5 * severity),
        "78552": 0.7 if "sepsis" in keys and severity > 1.0 else 0.0,
        "V1582": 0.3 if "tobacco" not in keys else 0.0,
    }
    codes += [code for code in _COURSE_DX if rng.random() < p[code]]
    return dedupe(codes)


def _code_procedures(rng: np.random.Generator, acute: list[_Condition], severity: float, vent: bool,
                     vent_days: float) -> list[str]:
    codes = [code for c in acute for code, p in c.procs if rng.random() < p]
    codes += _some(rng, _BACKGROUND_PROCS, 0.04)
    if vent:
        codes += (["9604"] if rng.random() < 0.5 else []) + ["9671" if vent_days < 4 else "9672"]
        if vent_days > 4 and rng.random() < 0.35:
            codes.append("966")
        if vent_days > 12 and rng.random() < 0.6:
            codes += ["3129"] + (["4311"] if rng.random() < 0.5 else [])
    if vent or severity > 0.8:  # ICU lines
        codes += _some(rng, ["3893", "3891"], 0.45)
    if rng.random() < _sigmoid(-3.2 + 0.9 * severity):
        codes.append("9904")
    return dedupe(codes)


def draw_cohort(rng: np.random.Generator, n_patients: int, max_admissions: int = _MAX_ADMISSIONS) -> list[_Admission]:
    """Admissions of n_patients latent patients, in patient order; task ids assigned."""
    admissions = []
    for p in range(n_patients):
        sex = "F" if rng.random() < 0.47 else "M"
        age = int(np.clip(round(rng.normal(64, 16)), 18, 99))
        frailty = float(rng.normal())
        chronic = _draw_chronic(rng, age, sex)
        n_adm = 1 + int(rng.random() < 0.35) + (int(rng.random() < 0.3) if max_admissions > 2 else 0)
        for k in range(min(n_adm, max_admissions)):
            adm = _draw_admission(rng, p, sex, age, frailty, chronic)
            adm.subject_id, adm.hadm_id = p + 1, _TASK_HADM_BASE + 10 * p + k
            admissions.append(adm)
            if adm.died:  # no readmission after an in-hospital death
                break
            age += int(rng.integers(0, 3))
    return admissions


# --------------------------------------------------------------------------------------------
# Writing notes from the latent state (the noisy channel)
# --------------------------------------------------------------------------------------------

_ALLERGIES = ("NKDA", "No Known Allergies / Adverse Drug Reactions", "Penicillins", "Sulfa (Sulfonamide Antibiotics)",
              "Codeine", "Penicillins / Iodine", "Patient recorded as having No Known Allergies to Drugs",
              "lisinopril (angioedema)")
_FAMILY = ("Non-contributory.", "Mother with HTN and DM2.", "Father with MI in his 60s.", "Sister with breast cancer.",
           "No family hx of early CAD.", "Unable to obtain.", "Mother with dementia, father with colon cancer.",
           "Noncontributory to present illness.", "Brother with DM2 and HTN.")
_PAST_SURGERY = ("s/p appendectomy", "s/p cholecystectomy", "s/p TAH/BSO", "s/p R knee replacement",
                 "s/p tonsillectomy", "s/p hernia repair", "cataract surgery OU")
_NORMAL_EXAM = {
    "GEN": ("NAD, A&Ox3", "well-appearing, comfortable", "pleasant, in NAD"),
    "HEENT": ("NCAT, MMM, EOMI", "PERRL, anicteric sclerae, MMM", "OP clear"),
    "Neck": ("supple, no JVD", "JVP not elevated", "no LAD"),
    "CV": ("RRR, no m/r/g", "RRR, normal S1 S2", "regular rate and rhythm, no murmurs"),
    "Lungs": ("CTAB", "clear to auscultation bilaterally", "CTAB, no wheezes/rales/rhonchi"),
    "Abd": ("soft, NT/ND, +BS", "soft, non-tender, non-distended", "benign"),
    "Ext": ("WWP, no edema", "no c/c/e", "2+ DP pulses, no edema"),
    "Neuro": ("A&Ox3, moving all extremities", "CN II-XII intact, strength 5/5 throughout", "non-focal"),
    "Skin": ("no rashes", "warm, dry, intact"),
}
# What the ED course says at each tier of observed severity (noisy readout of the latent severity).
_COURSE_BY_TIER = (
    ("HD stable", "ambulating without difficulty", "pain controlled with tylenol", "comfortable on arrival"),
    ("given 1L NS", "labs notable for mild leukocytosis", "admitted to medicine for further management", "VSS"),
    ("received 3L IVF", "lactate 3.4", "admitted to the step-down unit", "transient hypotension responsive to fluids",
     "started on IV abx"),
    ("started on levophed for MAP < 65", "MAP in the 50s despite 4L IVF", "admitted to the MICU",
     "R IJ CVL placed in the ED", "lactate 6.2", "family meeting held re: goals of care"),
)
_GEN_BY_TIER = (
    ("NAD, A&Ox3", "well-appearing, comfortable", "pleasant, in NAD", "sitting up in bed, NAD"),
    ("tired-appearing but in NAD", "mildly uncomfortable", "appears stated age, mild distress"),
    ("ill-appearing", "uncomfortable, diaphoretic", "lethargic but arousable", "moderate distress"),
    ("toxic-appearing", "lethargic, responds only to sternal rub", "mottled, cool extremities", "obtunded"),
)
_VENT_REASONS = ("airway protection", "hypoxemic respiratory failure", "hypercarbia", "increased work of breathing")


def _tier(severity_seen: float) -> int:
    return int(sum(severity_seen > t for t in (-0.4, 0.5, 1.3)))


def _age_text(age: int) -> str:
    return _DE_ID if age > 89 else str(age)  # HIPAA: ages over 89 are de-identified


def _sex_words(sex: str) -> tuple[str, str]:
    return ("M", "man") if sex == "M" else ("F", "woman")


def section_chief_complaint(rng, adm: _Admission) -> str:
    cc = _pick(rng, adm.reason.complaints)  # complaints are shared between conditions: a weak clue
    if len(adm.acute) > 1 and rng.random() < 0.3:
        cc += ", " + _pick(rng, adm.acute[1].complaints)
    return cc[0].upper() + cc[1:] if rng.random() < 0.5 else cc


def _history_names(rng, adm: _Admission, limit: int) -> list[str]:
    names = [_pick(rng, c.names) for c in adm.chronic if rng.random() < 0.7]
    return names[:limit]


def _vitals(rng, adm: _Admission, seen: float) -> str:
    febrile = any(c.febrile for c in adm.acute) and rng.random() < 0.7
    temp = 98.4 + (2.6 if febrile else 0.0) + rng.normal(0, 0.5)
    hr = 84 + 9 * seen + (25 if adm.reason.key == "afib_rvr" else 0) + rng.normal(0, 8)
    sbp = 130 - 10 * seen + rng.normal(0, 12)
    dbp = 0.6 * sbp + rng.normal(0, 6)
    rr = 17 + 2.0 * seen + 2.0 * adm.resp + rng.normal(0, 2)
    spo2 = 97 - 2.5 * adm.resp - 0.8 * max(seen, 0) + rng.normal(0, 1.5)
    o2 = ("RA" if spo2 > 93 else "2L NC" if spo2 > 90 else "4L NC" if spo2 > 87 else "NRB")
    if adm.vent and rng.random() < 0.3:
        o2 = "on vent"
    spo2 = min(100, max(78, round(spo2)))
    return (f"T {temp:.1f} BP {round(np.clip(sbp, 70, 210))}/{round(np.clip(dbp, 35, 120))} "
            f"HR {round(np.clip(hr, 40, 170))} RR {round(np.clip(rr, 10, 40))} SpO2 {spo2}% {o2}")


def section_present_illness(rng, adm: _Admission) -> str:
    sev_seen = adm.severity + rng.normal(0, 0.7)  # what the admitting team could see
    tier = _tier(sev_seen)
    short, word = _sex_words(adm.sex)
    hx = _history_names(rng, adm, limit=4)
    hx_text = "PMH of " + ", ".join(hx) if hx else "no significant PMH"
    reason = adm.reason
    who = _pick(rng, (f"{_age_text(adm.age)} y/o {short}", f"{_age_text(adm.age)} year old {word}",
                      f"Pt is a {_age_text(adm.age)} yo {short}"))
    out = [f"{who} with {hx_text} who presents with {_pick(rng, reason.complaints)}."]
    if reason in adm.acute:
        details = _some(rng, reason.hpi, 0.45) or [_pick(rng, reason.hpi)]
        out.append(_pick(rng, ("Pt reports ", "Per family, ", "Per OSH records, ", "")) + "; ".join(details) + ".")
        if rng.random() < 0.75:
            out.append(_pick(rng, ("Concern for ", "Found to have ", "Likely ", "Admitted for "))
                       + _pick(rng, reason.names) + ".")
    else:  # the note never gets to the diagnosis
        out.append(_pick(rng, ("Workup in progress.", "Etiology unclear at this time.", "Unable to obtain further hx.",
                               "")))
    for c in adm.acute:
        if c is not reason and rng.random() < 0.7:
            out.append(f"Also with {_pick(rng, c.names)}: {_pick(rng, c.hpi)}.")
    if rng.random() < 0.35:  # differential: a condition that shares a complaint with the true reason
        mimics = [c for c in _ACUTE if c is not reason and set(c.complaints) & set(reason.complaints)]
        if mimics:
            out.append(f"DDx includes {_pick(rng, _pick(rng, mimics).names)}.")
    if rng.random() < 0.4:  # distractor: a ruled-out or denied problem the patient does not have
        other = _pick(rng, _ACUTE)
        if other not in adm.acute:
            out.append(_pick(rng, (f"Denies {_pick(rng, other.complaints)}.", f"r/o {_pick(rng, other.names)}.",
                                   f"No evidence of {_pick(rng, other.names)}.")))
    ed = []
    if rng.random() < 0.6:
        ed.append("initial VS " + _vitals(rng, adm, sev_seen))
    ed += _some(rng, _COURSE_BY_TIER[tier], 0.35) or [_pick(rng, _COURSE_BY_TIER[tier])]
    if adm.vent and rng.random() < 0.5:
        ed.append(f"intubated for {_pick(rng, _VENT_REASONS)}")
    elif not adm.vent and adm.resp > 0.5 and rng.random() < 0.25:
        ed.append(_pick(rng, ("placed on BiPAP with improvement", "weaned from NRB to 4L NC")))
    out.append("In the ED, " + ", ".join(ed) + ".")
    if rng.random() < 0.35:
        out.append(_pick(rng, ("ROS otherwise negative.", "ROS negative except as per HPI.",
                               "10-point ROS otherwise negative.")))
    return " ".join(out)


def section_medical_history(rng, adm: _Admission) -> str:
    items = [_pick(rng, c.names) for c in adm.chronic if rng.random() < 0.85]
    if rng.random() < 0.1:  # copied-forward history item that is wrong
        items.append(_pick(rng, _pick(rng, _CHRONIC).names))
    items += _some(rng, _PAST_SURGERY, 0.06)
    items = dedupe(items)
    if not items:
        return "" if rng.random() < 0.5 else "None."
    style = int(rng.integers(3))
    if style == 0:
        return "\n".join(f"- {x}" for x in items)
    if style == 1:
        return "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1))
    return ", ".join(items)


def _medication_list(rng, conditions: Sequence[_Condition], p: float) -> list[str]:
    """Each drug slot of each condition taken with probability p (one of its alternatives)."""
    return dedupe(_pick(rng, slot.split("|")) for c in conditions for slot in c.meds if rng.random() < p)


def section_medications(rng, adm: _Admission) -> str:
    meds = _medication_list(rng, adm.chronic, 0.5)
    if not meds:
        return _pick(rng, ("", "None.", "None"))
    if rng.random() < 0.1:
        return "Unable to obtain; pt confused. Per OSH list: " + ", ".join(meds)
    lines = [f"{i}. {m}" for i, m in enumerate(meds, 1)]
    if rng.random() < 0.3:
        lines.insert(0, "The Preadmission Medication list is accurate and complete.")
    return "\n".join(lines)


def section_physical_exam(rng, adm: _Admission) -> str:
    sev_seen = adm.severity + rng.normal(0, 0.7)
    findings: dict[str, str] = {}
    for c in adm.acute + adm.chronic:  # true findings, each seen with some probability
        for f in c.exam:
            system, text = f.split(": ", 1)
            if system not in findings and rng.random() < (0.5 if c.acute else 0.3):
                findings[system] = text
    gen = findings.pop("GEN", None) or _pick(rng, _GEN_BY_TIER[_tier(sev_seen)])
    if adm.vent and rng.random() < 0.3:
        gen = "intubated, sedated"
    lines = [f"Vitals: {_vitals(rng, adm, sev_seen)}", f"GEN: {gen}"]
    for system in ("HEENT", "Neck", "CV", "Lungs", "Abd", "Back", "Rectal", "Ext", "Neuro", "Skin"):
        if system in findings:
            lines.append(f"{system}: {findings[system]}")
        elif system in _NORMAL_EXAM and (system in ("CV", "Lungs", "Abd") or rng.random() < 0.5):
            lines.append(f"{system}: {_pick(rng, _NORMAL_EXAM[system])}")
    return "\n".join(lines)


def section_social_history(rng, adm: _Admission) -> str:
    keys = [c.key for c in adm.chronic]
    if rng.random() < 0.1:
        return ""
    home = (f"Resides at {_DE_ID} nursing home." if ("dementia" in keys or adm.age > 85) and rng.random() < 0.6
            else _pick(rng, ("Lives with wife.", "Lives with husband.", "Lives alone.",
                             f"Lives with daughter in {_DE_ID}.", f"Lives in {_DE_ID} with partner.")))
    tobacco = (_pick(rng, ("Smokes 1 ppd.", "40 pack-year hx, active smoker.", "Current smoker, 1/2 ppd."))
               if "tobacco" in keys
               else _pick(rng, ("Never smoker.", "Quit tobacco 20 yrs ago.", "Denies tobacco.")))
    etoh = (_pick(rng, ("Drinks 6-8 beers daily.", "Heavy EtOH use, last drink yesterday.",
                        "Drinks a pint of vodka daily."))
            if "alcohol" in keys else _pick(rng, ("Occasional EtOH.", "Denies EtOH.", "Social EtOH.")))
    drugs = (_pick(rng, ("Denies illicit drugs.", "Denies IVDU.", "")) if "hiv" not in keys
             else "Hx of IVDU, in recovery.")
    job = _pick(rng, (f"Retired {_DE_ID}.", f"Works as a {_DE_ID}.", ""))
    return " ".join(x for x in (home, job, tobacco, etoh, drugs) if x)


def section_family_history(rng) -> str:
    return "" if rng.random() < 0.2 else _pick(rng, _FAMILY)


def section_allergies(rng) -> str:
    return "" if rng.random() < 0.05 else _pick(rng, _ALLERGIES)


def as_documented(rng, adm: _Admission) -> _Admission:
    """What an admission note knows: each condition is documented or not at all (the Bayes limit of the tasks)."""
    acute = [c for i, c in enumerate(adm.acute) if rng.random() < (0.75 if i == 0 else 0.6)]
    chronic = [c for c in adm.chronic if rng.random() < 0.7]
    return replace(adm, acute=acute, chronic=chronic)


def admission_note(rng: np.random.Generator, adm: _Admission) -> str:
    """van Aken's admission note: 8 headings in order, each on its own line; sections split by a blank line."""
    adm = as_documented(rng, adm)
    bodies = (
        section_chief_complaint(rng, adm),
        section_present_illness(rng, adm),
        section_medical_history(rng, adm),
        section_medications(rng, adm),
        section_allergies(rng),
        section_physical_exam(rng, adm),
        section_family_history(rng),
        section_social_history(rng, adm),
    )
    return "\n\n".join(f"{h}:\n{b}" if b else f"{h}:" for h, b in zip(ADMISSION_SECTIONS, bodies))


# --------------------------------------------------------------------------------------------
# Downstream tasks
# --------------------------------------------------------------------------------------------


def _task_labels(adm: _Admission) -> dict[str, str | None]:
    """Label cell of each task for one admission; None = not in that task's cohort."""
    return {
        "mor": str(int(adm.died)),
        "los": None if adm.died else str(los_class(adm.los_days)),
        "pmv": str(int(adm.vent_days > PMV_DAYS)) if adm.vent else None,
        "diag": ",".join(dedupe(cut_dx_code(c) for c in adm.dx)),
        "proc": ",".join(dedupe(cut_proc_code(c) for c in adm.procs)),  # "" = no procedure
    }


def _label_vocab(task: str, cells: Iterable[str]) -> list[str]:
    if task == "los":
        return ["0", "1", "2", "3"]
    if task in ("mor", "pmv"):
        return ["0", "1"]
    return sorted({code for cell in cells for code in cell.split(",") if code})


def _splits_usable(admissions: Sequence[_Admission], split_of: Sequence[str]) -> bool:
    """Every split holds every LOS class and both MOR and PMV classes (metrics need them)."""
    for split in ("train", "val", "test"):
        labels = [_task_labels(a) for a in admissions if split_of[a.patient] == split]
        if {lab["los"] for lab in labels} - {None} != {"0", "1", "2", "3"}:
            return False
        if {lab["mor"] for lab in labels} != {"0", "1"} or {lab["pmv"] for lab in labels} - {None} != {"0", "1"}:
            return False
    return True


def write_tasks(out_dir: str | Path, n_patients: int = 600, seed: int = 0,
                tasks: Iterable[str] = TASKS) -> dict[str, Path]:
    """Write the five downstream tasks as van Aken-format task dirs out_dir/<task>/{train,val,test}.csv +
    labels.txt; return {task: dir}.

    Columns `id,text,label`; id = hadm_id, from which `subject_id_of` recovers the patient; the
    patient split (70/10/20) is `patient_split(n_patients, seed)` and is the same for every task.
    Multilabel cells are comma-joined codes in coding order ("" = no positive label). Read the CSVs
    with `dtype=str, keep_default_na=False` to keep codes such as "038" and empty cells as written.
    """
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    if n_patients < MIN_TASK_PATIENTS:
        raise ValueError(f"n_patients={n_patients} is too small for a 70/10/20 split with every class; "
                         f"use >= {MIN_TASK_PATIENTS}")
    split_of = patient_split(n_patients, seed)
    # A small cohort can leave a split without some class; redraw it, deterministically, until not.
    for attempt in range(50):
        admissions = draw_cohort(seeded_rng(seed, _STREAM_TASK_COHORT, attempt), n_patients)
        if _splits_usable(admissions, split_of):
            break
    else:
        raise ValueError(f"n_patients={n_patients}: could not draw every class into every split; use more patients")

    text_rng = seeded_rng(seed, _STREAM_TASK_TEXT)
    texts = [admission_note(text_rng, a) for a in admissions]
    labels = [_task_labels(a) for a in admissions]
    splits = [split_of[a.patient] for a in admissions]

    out_dir = Path(out_dir)
    dirs = {}
    for task in tasks:
        rows = [(a.hadm_id, t, lab[task], a.sex, age_group(a.age), s)
                for a, t, lab, s in zip(admissions, texts, labels, splits) if lab[task] is not None]
        frame = pd.DataFrame(rows, columns=[*TASK_COLUMNS, *SUBGROUP_COLUMNS, "split"])
        task_dir = out_dir / task
        task_dir.mkdir(parents=True, exist_ok=True)
        for split in ("train", "val", "test"):
            write_csv(frame.loc[frame["split"] == split, [*TASK_COLUMNS, *SUBGROUP_COLUMNS]], task_dir / f"{split}.csv")
        vocab = _label_vocab(task, frame["label"])
        (task_dir / "labels.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        dirs[task] = task_dir
    return dirs


# --------------------------------------------------------------------------------------------
# Pretraining corpus (MIMIC-IV-Note shape)
# --------------------------------------------------------------------------------------------

_STUDIES = {  # kind: (EXAMINATION, TECHNIQUE, normal FINDINGS sentences, normal IMPRESSION)
    "cxr": ("CHEST (PA AND LAT)", "Chest PA and lateral",
            ("PA and lateral views of the chest provided.", "The lungs are clear without focal consolidation.",
             "No pleural effusion or pneumothorax is seen.",
             "The cardiomediastinal silhouette is within normal limits.", "Hilar contours are normal.",
             "No acute osseous abnormalities.", "Imaged upper abdomen is unremarkable."),
            "No acute cardiopulmonary process."),
    "cxr_port": ("CHEST (PORTABLE AP)", "Portable AP chest radiograph",
                 ("Single portable view of the chest.", "Lung volumes are low.",
                  "No large pleural effusion or pneumothorax.", "Heart size is mildly enlarged but stable.",
                  "Mediastinal and hilar contours are unremarkable.",
                  "Support lines and tubes are unchanged in position."),
                 "No acute cardiopulmonary process."),
    "ct_head": ("CT HEAD W/O CONTRAST", "Contiguous axial images of the brain were obtained without contrast.",
                ("There is no evidence of hemorrhage, edema, mass effect, or infarction.",
                 "The ventricles and sulci are normal in size.",
                 "Periventricular white matter hypodensities c/w chronic small vessel ischemic disease.",
                 "The basal cisterns are patent.", "No osseous abnormalities seen.",
                 "The visualized paranasal sinuses and mastoid air cells are clear."),
                "No acute intracranial process."),
    "cta_chest": ("CTA CHEST", "MDCT images through the chest after IV contrast, pulmonary embolism protocol.",
                  ("The aorta is normal in caliber.", "The main pulmonary artery is not enlarged.",
                   "No mediastinal or hilar lymphadenopathy.", "The lungs are clear.", "No pleural effusion.",
                   "Limited images of the upper abdomen are unremarkable."),
                  "No pulmonary embolism."),
    "ct_abd": ("CT ABD & PELVIS WITH CONTRAST", "MDCT images through the abdomen and pelvis after IV contrast.",
               ("The liver enhances homogeneously.", "The gallbladder is unremarkable.", "No free air or free fluid.",
                "The kidneys enhance symmetrically without hydronephrosis.",
                "The spleen and adrenal glands are normal.", "Small and large bowel loops are normal in caliber.",
                "Mild degenerative changes of the lumbar spine."),
               "No acute process in the abdomen or pelvis."),
    "ruq_us": ("LIVER OR GALLBLADDER US (SINGLE ORGAN)",
               "Grayscale and color Doppler ultrasound images of the abdomen.",
               ("The portal vein is patent with hepatopetal flow.", "No intrahepatic biliary dilation.",
                "The CBD measures 4 mm.", "The gallbladder is normal without stones or wall thickening.",
                "The spleen measures 11 cm."),
               "Normal right upper quadrant ultrasound."),
    "hip_xr": ("HIP (UNILAT) 2 VIEWS", "Two views of the hip.",
               ("No fracture or dislocation.", "Mild degenerative changes of the hip joint.",
                "Vascular calcifications are noted.", "The pubic symphysis and SI joints are preserved.",
                "Soft tissues are unremarkable."),
               "No acute fracture."),
    "renal_us": ("RENAL U.S.", "Grayscale and color Doppler ultrasound of the kidneys.",
                 ("The right kidney measures 10.8 cm.", "The left kidney measures 11.2 cm.",
                  "There is no stone or mass.", "Normal corticomedullary differentiation.",
                  "The bladder is decompressed around a Foley catheter."),
                 "Normal renal ultrasound."),
}
_COURSE_RESPONSE = ("Clinically improved.", "Symptoms resolved.", "Improved and tolerating PO.",
                    "Back to baseline by discharge.", "Slowly improved over the admission.")
_DISPOSITION = ("Home", "Home With Service", "Extended Care", "Home With Service", "Home")


def _labs(rng, adm: _Admission) -> str:
    keys = [c.key for c in adm.acute + adm.chronic]
    wbc = rng.normal(13.5 if any(c.febrile for c in adm.acute) else 8.0, 2.5)
    hgb = rng.normal(7.4 if "gib" in keys else 10.5 if "anemia" in keys else 12.6, 1.0)
    creat = rng.normal(3.6 if "aki" in keys else 1.9 if "ckd" in keys else 0.9, 0.25)
    na = rng.normal(119 if "hyponatremia" in keys else 138, 2.5)
    glucose = rng.normal(520 if "dka" in keys else 160 if "dm2" in keys else 104, 20)
    return (f"{_DE_ID} 07:40AM BLOOD WBC-{max(wbc, 0.4):.1f} Hgb-{hgb:.1f} Hct-{3 * hgb:.1f} "
            f"Plt Ct-{round(rng.normal(240, 60))}\n"
            f"{_DE_ID} 07:40AM BLOOD Glucose-{round(glucose)} UreaN-{round(rng.normal(22, 6))} "
            f"Creat-{max(creat, 0.4):.1f} Na-{round(na)} K-{rng.normal(4.2, 0.4):.1f} "
            f"Cl-{round(rng.normal(101, 3))} HCO3-{round(rng.normal(24, 3))}")


def _hospital_course(rng, adm: _Admission) -> str:
    short, _ = _sex_words(adm.sex)
    hx = _history_names(rng, adm, limit=3)
    lines = [f"{_age_text(adm.age)} y/o {short} with {'hx of ' + ', '.join(hx) if hx else 'no significant PMH'} "
             f"admitted with {_pick(rng, adm.reason.names)}."]
    for c in adm.acute:
        lines.append(f"# {_pick(rng, c.names)}: {_pick(rng, c.hpi)}. "
                     f"Treated with {_pick(rng, c.treat)}. {_pick(rng, _COURSE_RESPONSE)}")
    for c in adm.chronic[:2]:
        meds = [_pick(rng, slot.split("|")).split(" ")[0] for slot in c.meds]
        lines.append(f"# {_pick(rng, c.names)}: "
                     + (f"continued home {_pick(rng, meds)}." if meds else "stable, no active issues."))
    return "\n".join(lines)


def _numbered(items: Sequence[str]) -> str:
    return "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1)) or "None."


def _discharge_summary(rng, adm: _Admission) -> str:
    """A MIMIC-IV-style discharge summary; death is never written (corpus notes of survivors only)."""
    procs = dedupe(_PROC_NAMES[c] for c in adm.procs if c in _PROC_NAMES)
    dx_secondary = dedupe(_pick(rng, c.names) for c in adm.acute[1:] + adm.chronic)[:4]
    # bounded lists keep a summary at ~150-400 words (CPU demo speed)
    admission_meds = _medication_list(rng, adm.chronic, 0.5)[:6]
    discharge_meds = dedupe(_medication_list(rng, adm.acute, 0.7)
                            + [m for m in admission_meds if rng.random() < 0.85])[:6]
    disposition = _pick(rng, _DISPOSITION)
    sections = [
        f"Name:  {_DE_ID}                     Unit No:   {_DE_ID}",
        f"Admission Date:  {_DE_ID}              Discharge Date:   {_DE_ID}",
        f"Date of Birth:  {_DE_ID}             Sex:   {adm.sex}",
        f"Service: {adm.reason.service}",
        f"Allergies: \n{section_allergies(rng) or 'No Known Allergies / Adverse Drug Reactions'}",
        f"Attending: {_DE_ID}.",
        f"Chief Complaint:\n{section_chief_complaint(rng, adm)}",
        "Major Surgical or Invasive Procedure:\n" + ("\n".join(procs) if procs else "None"),
        f"History of Present Illness:\n{section_present_illness(rng, adm)}",
        f"Past Medical History:\n{section_medical_history(rng, adm) or 'None.'}",
        f"Social History:\n{_DE_ID if rng.random() < 0.6 else section_social_history(rng, adm) or _DE_ID}",
        f"Family History:\n{section_family_history(rng) or 'Noncontributory.'}",
        f"Physical Exam:\nADMISSION PHYSICAL EXAM:\n{section_physical_exam(rng, adm)}",
        f"Pertinent Results:\n{_labs(rng, adm)}",
        f"Brief Hospital Course:\n{_hospital_course(rng, adm)}",
        "Medications on Admission:\n" + _numbered(admission_meds),
        "Discharge Medications:\n" + _numbered(discharge_meds),
        f"Discharge Disposition:\n{disposition}"
        + (f"\n\nFacility:\n{_DE_ID}" if disposition == "Extended Care" else ""),
        f"Discharge Diagnosis:\nPrimary: {_pick(rng, adm.reason.names)}"
        + (f"\nSecondary: {', '.join(dx_secondary)}" if dx_secondary else ""),
        "Discharge Condition:\nMental Status: Clear and coherent.\nLevel of Consciousness: Alert and interactive.\n"
        "Activity Status: " + _pick(rng, ("Ambulatory - Independent.",
                                          "Ambulatory - requires assistance or aid (walker or cane).",
                                          "Out of Bed with assistance to chair or wheelchair.")),
        f"Discharge Instructions:\nDear {_DE_ID},\nYou were admitted for {_pick(rng, adm.reason.complaints)} "
        f"and treated with {_pick(rng, adm.reason.treat)}. Please take your medications as prescribed.\n"
        f"Your {_DE_ID} Care Team",
        f"Followup Instructions:\n{_DE_ID}",
    ]
    return "\n\n".join(sections)


def _radiology_report(rng, adm: _Admission, kind: str, finding: str, impression: str) -> str:
    exam, technique, normals, normal_impression = _STUDIES[kind]
    short, word = _sex_words(adm.sex)
    sentences = _some(rng, normals, 0.8) or [normals[0]]
    if finding and rng.random() < 0.85:
        sentences.insert(0, finding)
    else:
        impression = normal_impression if not finding else impression
    indication = _pick(rng, adm.reason.complaints)
    notification = (f"\n\nNOTIFICATION:  The findings were discussed with Dr. {_DE_ID} by Dr. {_DE_ID} "
                    f"on the telephone on {_DE_ID} at {_DE_ID}, within 30 minutes of discovery."
                    if finding and rng.random() < 0.3 else "")
    return "\n\n".join([
        f"EXAMINATION:  {exam}",
        f"INDICATION:  {_DE_ID} year old {word} with {indication}  // "
        f"{_pick(rng, ('eval for acute process', 'r/o ' + _pick(rng, adm.reason.names), 'interval change?'))}",
        f"TECHNIQUE:  {technique}",
        f"COMPARISON:  {_pick(rng, ('None.', f'{_DE_ID}', f'Prior study from {_DE_ID}.'))}",
        "FINDINGS: \n\n" + " ".join(sentences),
        f"IMPRESSION: \n\n{impression}",
    ]) + notification


def _studies_for(rng, adm: _Admission) -> list[tuple[str, str, str]]:
    """Imaging done during an admission: each acute condition's study (if any), else a chest film."""
    studies = [c.study for c in adm.acute if c.study and rng.random() < 0.85]
    if not studies or rng.random() < 0.3:
        studies.append(("cxr_port" if adm.vent else "cxr", "", ""))
    return studies[:3]


def _timestamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def write_pretraining_corpus(out_dir: str | Path, n_patients: int = 200, seed: int = 0) -> dict[str, Path]:
    """Write MIMIC-IV-Note-shaped `discharge.csv.gz` and `radiology.csv.gz` into out_dir; return
    {"discharge": path, "radiology": path}.

    Columns: note_id, subject_id, hadm_id, note_type, note_seq, charttime, storetime, text.
    discharge: note_type DS (about 5% AD addenda); radiology: RR (about 3% AR addenda); some
    radiology reports are outpatient and have an empty hadm_id, as in MIMIC-IV.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    cohort_rng, rng = seeded_rng(seed, _STREAM_CORPUS_COHORT), seeded_rng(seed, _STREAM_CORPUS_TEXT)
    admissions = draw_cohort(cohort_rng, n_patients, max_admissions=3)
    # MIMIC-IV-like ids: random distinct 8-digit subject ids (10...) and hadm ids (2...)
    subject_ids = np.sort(cohort_rng.choice(9_000_000, size=n_patients, replace=False)) + 10_000_000
    hadm_ids = cohort_rng.choice(9_000_000, size=len(admissions), replace=False) + 20_000_000

    discharge, radiology = [], []
    seq = {}  # (subject, note kind) -> last note_seq; MIMIC-IV numbers notes per subject and kind
    admit_at: dict[int, datetime] = {}
    for adm, hadm in zip(admissions, hadm_ids):
        subject = int(subject_ids[adm.patient])
        hadm = int(hadm)
        if adm.patient not in admit_at:  # shifted dates, years 2110-2190 as in MIMIC
            admit_at[adm.patient] = datetime(2110, 1, 1) + timedelta(days=int(rng.integers(0, 80 * 365)),
                                                                     minutes=int(rng.integers(0, 1440)))
        admit = admit_at[adm.patient]
        discharge_at = admit + timedelta(minutes=round(adm.los_days * 24 * 60))
        admit_at[adm.patient] = discharge_at + timedelta(days=int(rng.integers(20, 700)))  # the next admission

        def next_seq(kind: str, start: int) -> int:
            seq[subject, kind] = seq.get((subject, kind), start - 1) + 1
            return seq[subject, kind]

        for kind, finding, impression in _studies_for(rng, adm):
            at = admit + timedelta(minutes=int(rng.integers(30, 60 * 24 * max(adm.los_days, 0.5) * 0.8)))
            text = _radiology_report(rng, adm, kind, finding, impression)
            n = next_seq("RR", int(rng.integers(1, 20)))
            radiology.append((f"{subject}-RR-{n}", subject, hadm, "RR", n, _timestamp(at),
                              _timestamp(at + timedelta(minutes=int(rng.integers(20, 600)))), text))
            if rng.random() < 0.03:
                n = next_seq("RR", 1)
                radiology.append((f"{subject}-AR-{n}", subject, hadm, "AR", n, _timestamp(at),
                                  _timestamp(at + timedelta(hours=int(rng.integers(6, 48)))),
                                  f"ADDENDUM:  Findings were discussed with Dr. {_DE_ID} by telephone at {_DE_ID}.\n\n"
                                  + text))
        if rng.random() < 0.1:  # outpatient study: no hospital admission
            at = admit - timedelta(days=int(rng.integers(10, 300)))
            n = next_seq("RR", 1)
            radiology.append((f"{subject}-RR-{n}", subject, None, "RR", n, _timestamp(at),
                              _timestamp(at + timedelta(hours=2)), _radiology_report(rng, adm, "cxr", "", "")))

        day = discharge_at.replace(hour=0, minute=0, second=0, microsecond=0)
        stored = discharge_at + timedelta(minutes=int(rng.integers(120, 72 * 60)))
        n = next_seq("DS", int(rng.integers(10, 30)))
        discharge.append((f"{subject}-DS-{n}", subject, hadm, "DS", n, _timestamp(day), _timestamp(stored),
                          _discharge_summary(rng, adm)))
        if rng.random() < 0.05:
            n = next_seq("DS", 1)
            discharge.append((f"{subject}-AD-{n}", subject, hadm, "AD", n, _timestamp(day),
                              _timestamp(stored + timedelta(days=2)),
                              f"Addendum:\nThe discharge medication list was reconciled with the pt and {_DE_ID}. "
                              f"Pt to follow up with PCP Dr. {_DE_ID} within 1 week."))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"discharge": out_dir / "discharge.csv.gz", "radiology": out_dir / "radiology.csv.gz"}
    for name, rows in (("discharge", discharge), ("radiology", radiology)):
        frame = pd.DataFrame(rows, columns=list(CORPUS_COLUMNS))
        frame["hadm_id"] = frame["hadm_id"].astype("Int64")  # nullable: outpatient radiology has none
        write_gzip_csv(frame, paths[name])
    return paths


# --------------------------------------------------------------------------------------------
# Demo data
# --------------------------------------------------------------------------------------------


def write_demo_data(out_dir: str | Path, size: str = "default", seed: int = 0) -> dict:
    """Both of the above with preset sizes: size="quick" (small, for a <2 min demo and tests) or "default"
    (for a <10 min CPU demo). Writes out_dir/corpus/ and out_dir/tasks/. Return {"corpus": {...paths},
    "tasks": {task: dir}}."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    out_dir = Path(out_dir)
    return {
        "corpus": write_pretraining_corpus(out_dir / "corpus", n_patients=SIZES[size]["corpus"], seed=seed),
        "tasks": write_tasks(out_dir / "tasks", n_patients=SIZES[size]["tasks"], seed=seed),
    }
