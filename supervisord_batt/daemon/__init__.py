"""The daemon process: `lifecycle` (startup, main loop, shutdown), the socket `server`,
the request handlers (`commands`) and the rate-limited lease lines (`leaselog`).
"""
