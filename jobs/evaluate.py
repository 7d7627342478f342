"""Ray job: BLEU and chrF of a checkpoint on a prepared split or a TSV. Same flags as
`s2s evaluate`, e.g.

    python jobs/evaluate.py --checkpoint s3://bucket/runs/r1/best --data s3://bucket/prepared \
        --split test --beam 4 --output s3://bucket/runs/r1/eval
"""

import sys

from s2s.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
