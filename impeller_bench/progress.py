"""Progress reporting: library loops take ``progress(items, label)``; the CLI passes a bar."""


def no_progress(items, label):
    """The silent default: the items, unchanged."""
    return items
