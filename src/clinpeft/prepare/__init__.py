"""Builders: raw clinical tables -> what pretrain and finetune read.

One module per `clinpeft prepare DATASET` subcommand (registered in cli.PREPARE_MODULES): notes.py
(MIMIC-IV-Note -> the pretraining corpus), mimic3.py (van Aken's admission-note tasks), pmv.py (BEEP's PMV).
"""
