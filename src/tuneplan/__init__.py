"""tuneplan: what an LLM fine-tune needs (memory, fit, time, cost), before you rent or buy."""

__version__ = "0.1.0"
