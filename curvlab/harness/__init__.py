"""The comparison harness: problems, runs, results store, metrics, reports."""
