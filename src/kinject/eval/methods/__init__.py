"""Built-in evaluation methods, one module each (discovered by `kinject.eval.method`)."""
