"""Read-only views of the store: ``show``, ``history``, ``status``, ``report`` and the end-of-run summary.

They import neither torch nor the run or trial machinery, so they answer
fast and work on a machine that only has the store.
"""
