"""Training one method: ``train(config)`` turns a RunConfig into a run folder and the checkpoint to evaluate.

The recipe (``recipe``) sets up the method, data, processes and model; plans how a step executes on this
device (``plan``: micro-batch, gradient checkpointing, packing, from a memory probe); fits with the recipe's
Trainer (``trainer``), which lays out each step's sequences (``batches``), computes the loss at label
positions only (``loss``) and validates token-weighted (``validation``), under the callbacks that stop a run
early or log its stats (``callbacks``) and on the engine that spreads it over processes (``engines``); and
finishes with the record of the run.
"""

from peftbench.train.recipe import TrainResult, train

__all__ = ["TrainResult", "train"]
