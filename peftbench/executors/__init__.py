"""Where a study's steps run: one interface, one small module per engine.

- ``local`` (default): this machine, one step at a time; ``--workers N`` runs N at once, ``--gpus 0,1,2,3`` one
  step per GPU at once (each sees its GPU as ``CUDA_VISIBLE_DEVICES``).
- ``ray``: each step a Ray task asking for what it needs (one GPU for training and evaluation of a GPU study);
  a step receives the results of the steps it needs, so Ray starts it when they finish.
- ``slurm``: each step a Slurm batch job, submitted when the steps it needs have finished and followed with
  Slurm's own commands to its end (requeued, cancelled, timed out, never able to start).

Every step is an ordinary ``peftbench train|eval|analyze`` command in its own process, its output in
``<study>/logs/<step>.log``, wherever it runs (the study folder must be on a filesystem every node sees). A step
whose command fails is reported with its command and its log's last lines; the steps that need it do not run,
the others go on, and the study ends with a summary and the command that runs what is missing.

Every driver holds the study's lock and journals what it submitted (``journal.py``): one driver per study, and a
driver that died is followed by one that picks up its jobs. SIGTERM and SIGHUP stop a driver as Ctrl-C does.
"""
