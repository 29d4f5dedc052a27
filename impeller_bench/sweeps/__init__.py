"""Sweeps: a grid of runs (methods x datasets x seeds x options) expanded into cells keyed by digest (``grid``),
each run whole or not at all where it lands (``cells``), on Dask distributed or in-process (``engine``), and
summarised in a table, intervals and plots (``results``, ``plots``)."""
