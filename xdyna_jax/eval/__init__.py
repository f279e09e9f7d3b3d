"""Eval room: every score of generated videos against their driving videos (``docs/EVAL.md``)."""
