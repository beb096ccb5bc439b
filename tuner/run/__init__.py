"""The planning process of ``dstune run`` and ``dstune worker``: Plan, Do, Check, Act.

It never imports torch or the user's workload: trials run in their own
processes (:mod:`dstune.trial`), and what they measure comes back as
records.  Only this package and the store talk to Optuna.
"""
