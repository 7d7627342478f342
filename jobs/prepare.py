"""Ray job: prepare a corpus. Same flags as `s2s prepare`, e.g.

python jobs/prepare.py --config jobs/configs/prepare_gettext.yaml output=s3://bucket/prepared
"""

import sys

from s2s.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
