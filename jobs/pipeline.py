"""Ray job: the whole pipeline, prepare -> train -> evaluate -> translate, each stage skipped when
its output is complete (see s2s/pipeline.py); a prepare that failed or was killed midway is run
again by the next run of the job. Same flags as `s2s pipeline`; the same command runs on an embedded
local Ray and under `ray job submit`:

    python jobs/pipeline.py --corpus s3://raw/en-de.tsv --docs s3://inbox/ --output s3://nmt/en-de \
        --preset transformer-small --max-steps 20000 --workers 2 [--config FILE] [train.lr=5e-4 ...]

Exit status (s2s/exitcodes.py): 0 done; 1 some documents' inputs failed to translate (listed
last); 2 refused before work: a bad setting or unreachable storage (the reason printed last); 3
another run is preparing or translating into the output; 70 an internal error (a one-line summary
last).
"""

import sys

from s2s.cli import _pipeline_config_from_args, build_parser, main
from s2s.pipeline import PipelineConfig


def config_from_args(argv: list[str]) -> PipelineConfig:
    """The settings this command line gives, loaded but not run (tests check manifests with it)."""
    return _pipeline_config_from_args(build_parser().parse_args(["pipeline", *argv]))


if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
