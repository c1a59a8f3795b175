"""Baselines a neural result is compared with, as commands (the tools layer: they read datasets
and runs, nothing in lab imports them).

    python -m lab.baselines.tfidf   TF-IDF + logistic regression on shakespeare_plays
"""
