"""Registers config sections of the workflows built on the trainer (imported by train.py)."""
