"""Concept fine-tuning: which weights train, the data they see, the loop, the layer analysis."""

# lcd.config imports TrainConfig (its `train` section) and TrainConfig subclasses lcd.config's
# StrictConfig: importing lcd.config first makes either import order work.
import lcd.config  # noqa: F401
