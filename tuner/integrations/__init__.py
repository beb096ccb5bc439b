"""Glue between dstune's tuned configurations and the trainers people use (Lightning's callback lives here)."""
