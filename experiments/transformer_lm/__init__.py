"""GPT character language model on shakespeare_char (nanoGPT's CPU recipe, in lab)."""
