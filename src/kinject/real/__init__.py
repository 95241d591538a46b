"""kinject on a real pretrained LLM: the SmolLM2-135M-Instruct preset (`kinject demo --preset smollm2`)."""
