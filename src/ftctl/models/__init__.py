"""Model folders: the built-in tiny Phi-3 model and the on-disk layouts ftctl reads."""
