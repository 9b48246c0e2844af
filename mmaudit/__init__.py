"""mmaudit: audit trained multimodal medical AI checkpoints."""

__version__ = "0.1.0"
