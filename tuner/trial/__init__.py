"""The trial process: build the user's workload under a configuration and measure it.

Everything torch touches lives here, and runs in a fresh process per trial
(:mod:`dstune.trial.launch` starts it).  The trial process never talks SQL:
it hands its measurement back as a JSON record.
"""
