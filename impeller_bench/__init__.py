"""impeller-bench: dataset and benchmark toolkit for unsupervised pixel-level anomaly detection on cast impellers.

The package follows the pipeline: sources -> build (split) -> data (load) ->
detectors -> predictions -> metrics -> leaderboard.
"""
__version__ = "0.1.0"
