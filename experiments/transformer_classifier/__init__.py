"""BERT-style Transformer classifier of Shakespeare speeches (play and genre), seed-002 recipe."""
