"""impeller-bench: dataset and benchmark toolkit for unsupervised pixel-level anomaly detection on cast impellers.

The subpackages are the pipeline's stages, each importing only from the stages before it and from
``common``: ``data`` (public sources -> split manifest -> dataset) -> ``detectors`` (fit on normal images,
score images) -> ``evaluation`` (predictions folder -> metrics) -> ``leaderboard`` (submission -> board) ->
``inspection`` (run, model files, predict, export, latency) -> ``cli``.

The public entry points are here: :func:`load_dataset`, :func:`evaluate`, :func:`load_model`, and
``impeller_bench.detectors.create``.
"""
from .common.version import __version__

__all__ = ["__version__", "evaluate", "load_dataset", "load_model"]


def load_dataset(root):
    """A dataset folder (a built split, or a plain MVTec AD category): see :mod:`impeller_bench.data.dataset`."""
    from .data.dataset import load_dataset as load

    return load(root)


def evaluate(dataset, predictions, **options) -> dict:
    """The reference evaluator on a dataset and a predictions folder (paths or loaded objects): see
    :func:`impeller_bench.evaluation.evaluate.evaluate`."""
    from .evaluation.evaluate import evaluate as run

    return run(dataset, predictions, **options)


def load_model(path, device=None):
    """A model file from ``impeller-bench train``: ``load_model(FILE).predict(images)`` judges parts
    (see :mod:`impeller_bench.inspection.model`)."""
    from .inspection.model import load_model as load

    return load(path, device)
