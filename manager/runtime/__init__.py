"""The controller runtime: work queue, workers, requeue, the reconcile contract."""
