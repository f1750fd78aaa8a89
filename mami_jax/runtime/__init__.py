"""Process plumbing: allocator preload, log filters, the metric writer."""
