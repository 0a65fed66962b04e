"""Base models and the machine they run on: loading (hub id, folder or the embedded SmolLM2), the precision
policy, the accelerator's memory, geometries built from a config alone, and GPT-Neo's faster kernels.

The bottom of the flow after ``errors``: everything else may import it; it imports nothing of peftbench's above.
"""
