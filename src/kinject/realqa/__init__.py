"""Real QA sets with their own passages (data/realqa and any file in the same schema): reading and
validating a questions JSONL + passages TSV, and `kinject realqa eval`."""
