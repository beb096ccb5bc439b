"""The devices a run measures on: GPU slots, the lock that keeps runs apart, the idle gate, process liveness."""
