"""`python -m needlework.study.worker SPEC.json`: one process of a launched train/evaluate stage
(see needlework.study.launch)."""

import sys

from needlework.study.launch import worker_main

if __name__ == "__main__":
    worker_main(sys.argv[1])
