"""ftctl: a chat-model fine-tuning pipeline, one stage per command."""

__version__ = "0.1.0"
