"""Settings, validated where they are built: a training run (``RunConfig``), an evaluation (``EvalConfig``), the
choices they share and the pure checks of flags (``checks``)."""

from peftbench.config.choices import EVAL_MODES, ZERO_SHOT, default_data_dir
from peftbench.config.evaluation import EvalConfig
from peftbench.config.run import RunConfig

__all__ = ["EVAL_MODES", "ZERO_SHOT", "EvalConfig", "RunConfig", "default_data_dir"]
