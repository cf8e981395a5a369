"""Process-wide machinery: thread counts, memory limits, progress bars.

    threads.py   how many CPU threads torch uses, set once per process
    limits.py    refuse image sizes, batch sizes and beam counts that cannot fit, before any work
    progress.py  progress bars on a terminal only
"""
