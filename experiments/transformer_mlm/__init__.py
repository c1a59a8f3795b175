"""Masked-LM pretraining of the Transformer encoder on shakespeare_char (for the classifier)."""
