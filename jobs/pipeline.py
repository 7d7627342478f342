"""Ray job: the whole pipeline, prepare -> train -> evaluate -> translate, each stage skipped when
its output is complete (see s2s/pipeline.py); a prepare that failed or was killed midway is run
again by the next run of the job. The same command runs on an embedded local Ray and under
`ray job submit`:

    python jobs/pipeline.py --corpus s3://raw/en-de.tsv --docs s3://inbox/ --output s3://nmt/en-de \
        --model transformer-small --max-steps 20000 --workers 2 [--config FILE] [train.lr=5e-4 ...]

Exit status (s2s/exitcodes.py): 0 done; 1 some documents' inputs failed to translate (listed
last); 2 refused before work: a bad setting or unreachable storage (the reason printed last); 3
another run is preparing or translating into the output; 70 an internal error (a one-line summary
last).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from s2s.exitcodes import INPUTS_FAILED, OK, run_guarded
from s2s.pipeline import PipelineConfig, load_pipeline_config, run_pipeline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", help="raw parallel text (repeatable)")
    parser.add_argument("--docs", help="documents to translate")
    parser.add_argument("--output", help="root of prepared/, runs/, translations/")
    parser.add_argument("--model", dest="train.preset", help="model preset (transformer-small)")
    parser.add_argument("--max-steps", dest="train.max_steps", type=int)
    parser.add_argument("--max-time", dest="train.max_time_min", type=float, help="minutes")
    parser.add_argument("--workers", dest="train.workers", help="N, or MIN-MAX (elastic)")
    parser.add_argument("--gpu", dest="train.use_gpu", action="store_true", default=None)
    parser.add_argument("--config", help="YAML with corpus/docs/output and stage sections")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.lr=5e-4")
    return parser


def config_from_args(argv: list[str] | None = None) -> PipelineConfig:
    """Parse the command line into the pipeline's config (raises ConfigError when invalid)."""
    args = vars(build_parser().parse_args(argv))
    path, overrides = args.pop("config"), args.pop("overrides")
    cfg = load_pipeline_config(path, {k: v for k, v in args.items() if v is not None}, overrides)
    if cfg.train.use_gpu:  # --gpu: every stage that computes with the model does it on GPUs
        cfg.evaluate.use_gpu = cfg.translate.use_gpu = True
    return cfg


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_guarded("pipeline", lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    cfg = config_from_args(argv)
    report = run_pipeline(cfg)
    translated = report["translate"]
    print(json.dumps({k: v for k, v in report.items() if k != "translate"}, indent=2, default=str))
    print(f"prepared     {cfg.prepare.output}")
    print(f"checkpoint   {report['train']['checkpoint']}")
    print(f"test BLEU    {report['evaluate']['bleu']} (chrF {report['evaluate']['chrf']})")
    print(f"translations {cfg.translate.output}: {translated['rows_written']} documents written, "
          f"{translated['inputs']['already_complete']} inputs already complete")  # fmt: skip
    for failure in translated["inputs"]["failed"]:
        print(f"FAILED {failure['input']}: {failure['error']}")
    return INPUTS_FAILED if translated["inputs"]["failed_count"] else OK


if __name__ == "__main__":
    sys.exit(main())
