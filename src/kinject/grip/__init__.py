"""GRIP: retrieval as generation. The model writes control-token turns that either answer
(`[ANSWER] .. [SOLVED]`) or plan (`[INTERMEDIARY] .. [RETRIEVE] query`); see docs/design.md."""
