"""The host: every limit that can refuse a new thread, read cheaply into one sample.

`sample` holds the immutable records (`HostSample`, `Limit`); `procfs` and `memcg`
parse /proc and cgroup files; `monitor.HostMonitor` keeps the files open and samples
them each tick; `probe` renders a sample for people and scripts.
"""
