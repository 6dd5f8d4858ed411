"""crilab's benchmark sections; ``benchmarks/run.py`` runs them (``make bench``)."""
