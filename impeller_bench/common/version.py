"""The package's version: recorded in every model file, predictions folder and submission."""
__version__ = "0.1.0"
