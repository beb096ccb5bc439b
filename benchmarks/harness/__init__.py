"""dstune's benchmark harness: dstune against the default, the tuning guide's checklist, Lightning's and
Accelerate's batch-size finders and an exhaustive grid, measured side by side with one measurement code.

    python -m benchmarks.harness run resnet50 --budget 15m
    python -m benchmarks.harness table benchmarks/results/*-bench.json
"""
