"""The Azure ML backend: the notebook's calls through azure-ai-ml (imported only when this backend runs)."""
