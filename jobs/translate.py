"""Ray job: translate a document set into one output file per input file. Same flags as
`s2s translate`, e.g.

    python jobs/translate.py --checkpoint s3://bucket/runs/r1/best --input s3://bucket/docs/ \
        --output s3://bucket/translations/ --beam 4 --concurrency 1,8

Exit status (s2s/exitcodes.py): 0 when every input is translated, 1 when some inputs failed
(named in the last lines and in _run.json), 2 refused before work (a bad setting, a damaged model,
unreachable storage), 3 another run writes the output, 70 an internal error.
"""

import sys

from s2s.cli import main

if __name__ == "__main__":
    sys.exit(main(["translate", *sys.argv[1:]]))
