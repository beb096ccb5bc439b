"""``dstune daemon``: runs due schedules one GPU at a time, with a heartbeat and Prometheus metrics."""
