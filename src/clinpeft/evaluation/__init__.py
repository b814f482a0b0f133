"""Metrics as pure functions of arrays: perplexity, AUROC per task type, bootstrap intervals and paired tests."""
