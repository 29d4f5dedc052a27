"""impeller-bench: dataset and benchmark toolkit for unsupervised pixel-level anomaly detection on cast impellers.

The package follows the pipeline: sources -> build (split) -> data (load) ->
detectors -> predictions -> metrics -> leaderboard.
"""
__version__ = "0.1.0"


def load_model(path, device=None):
    """A model file from ``impeller-bench train``: ``load_model(FILE).predict(images)`` judges parts
    (see :mod:`impeller_bench.inspection`)."""
    from .inspection import load_model as load

    return load(path, device)
