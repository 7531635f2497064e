"""Model updates: the signed manifest, signature and file checks, and the model store."""
