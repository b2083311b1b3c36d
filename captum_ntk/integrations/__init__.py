"""Integrations with model families and libraries outside PyTorch core (Hugging Face)."""
