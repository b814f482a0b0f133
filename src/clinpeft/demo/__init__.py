"""Demo assets: the tiny demo LLaMA and BERT, synthetic notes and tasks, MIMIC-III-shaped tables for tests."""
