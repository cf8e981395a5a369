"""Process-wide machinery: thread counts, memory limits, progress bars.

    threads.py   how many CPU threads torch uses, set once per process
    limits.py    refuse image sizes, batch sizes and beam counts that cannot fit, before any work
    progress.py  progress bars on a terminal only
    precision.py a loaded model cast to bfloat16 or quantised to int8 for inference (--precision)
    agreement.py how close a reduced precision stays to fp32 on given images (vlm check-precision)
    process_group.py  leaving an accelerate-launched process: its process group destroyed before shutdown
"""
