"""Run folders and what they hold: the record (``output.jsonl``: config, environment, data, outcome), run folder
names, resume points and finished runs, trained models rebuilt from a checkpoint, experiment tracking.

Training writes these and evaluation, analysis and studies read them; nothing here trains or evaluates.
"""
