"""Training helpers shared by the recipes: Trainer arguments, perplexity passes, the classification loop."""
