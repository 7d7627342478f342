"""Ray job: train a model. Same flags as `s2s train`, e.g.

    python jobs/train.py --data s3://bucket/prepared --output s3://bucket/runs/r1 \
        --preset transformer-small --workers 2 --max-time 20
"""

import sys

from s2s.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
