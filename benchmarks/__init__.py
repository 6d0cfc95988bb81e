import os

# The CPU peak-memory measurement (rga_ops.profiling.peak_allocated_bytes) runs torch.profiler,
# whose Kineto library logs "USDT: ... profiler_start / profiler_stop" at every run, at its
# highest level; 6 (above it) silences Kineto's log, read when the profiler first starts.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
