"""The nine stages on Azure ML. Each module imports azure.* inside the functions that call Azure, so that
`ftctl status` (which reads their `summary` and `inputs`) stays free of the SDK."""
