"""Baselines that need their own training: the LoRA parametric baseline (`kinject baselines lora`)."""
