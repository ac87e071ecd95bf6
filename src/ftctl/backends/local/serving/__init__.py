"""The local endpoint's parts, by role: request parsing (request), generation (generation), the HTTP
app (app), and the probes the deploy stage uses (probe). The process entry is ftctl.backends.local.server."""
