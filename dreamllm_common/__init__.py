"""Utilities shared by inference (`generate.py`, the demo) and training (`train/`), so that neither imports the other:
`folders` publishes folders whole."""
