"""The queue: Redis (embedded server), batch state, enqueue, the RQ job function, leases and the
reaper, workers, the collector, the scheduler. Every conversation is one RQ job."""
