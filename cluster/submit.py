"""Submit a Ray job and exit with the job's own exit status: the submitter of the nightly CronJob.

`ray job submit` exits 1 whenever a job fails, whatever the job's exit status was, so a Kubernetes
Job cannot tell "another run holds the lease" (3) from "some inputs failed" (1). This submits with
Ray's job client, streams the job's logs to stdout, waits for the job to end and exits with:

    0   the job succeeded
    N   the job's driver exited with N (s2s/exitcodes.py: 1 some inputs failed, 2 refused,
        3 busy: another run holds the output's lease, 70 internal error)
    70  the job ended without an exit status of its own: it could not start (runtime env), it
        was stopped, its driver was killed by a signal; or the head stayed unreachable through
        --patience tries (60, --poll 5 s apart: 5 minutes); a failure of the cluster, not of
        the input

    python cluster/submit.py --address http://HEAD:8265 --group NAME -- python jobs/translate.py ...

--group tags the submission (the CronJob passes its Kubernetes Job's name). A replacement pod of the
same group that finds that group's run still going follows it instead of submitting a second run
(which would only exit 3, busy); a group whose runs have all ended gets a new one.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
import uuid

OK, INTERNAL = 0, 70  # as in s2s/exitcodes.py; this file imports nothing of s2s
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
GROUP_KEY = "s2s-group"  # the job metadata key that names the group


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="submit", description="Submit a Ray job; exit with the job's own exit status."
    )
    parser.add_argument("--address", required=True, help="the Ray dashboard, http://HEAD:8265")
    parser.add_argument("--group", help="a name for this run's attempts (the Kubernetes Job's)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between status checks")
    parser.add_argument(
        "--patience", type=int, default=60, help="tries while the head (re)starts, --poll s apart"
    )
    parser.add_argument("entrypoint", nargs="+", help="the job's command, after --")
    return parser


def status_of(info) -> str:
    return getattr(info.status, "value", info.status)  # JobStatus is a str Enum


def exit_code(info) -> int:
    """The exit status a scheduler sees for a finished job."""
    status, code = status_of(info), info.driver_exit_code
    if status == "SUCCEEDED":
        return OK
    if status == "FAILED" and code is not None and 0 < code < 256:
        return code
    return INTERNAL  # no exit status of the driver's own: stopped, killed, never started


def running_job(client, group: str) -> str | None:
    """The submission id of a run of ``group`` that has not ended, if any."""
    for job in client.list_jobs():
        if (job.metadata or {}).get(GROUP_KEY) == group and status_of(job) not in TERMINAL:
            return job.submission_id
    return None


def exists(client, job_id: str) -> bool:
    try:
        client.get_job_info(job_id)
    except Exception:
        return False
    return True


async def _stream_logs(client, job_id: str, out) -> None:
    async for lines in client.tail_job_logs(job_id):
        out.write(lines)
        out.flush()


def retrying(call, what: str, tries: int, poll: float, sleep):
    """``call()``, again while the head starts or restarts: ``tries`` times, ``poll`` s apart."""
    for attempt in range(1, tries + 1):
        try:
            return call()
        except Exception as err:
            if attempt == tries:
                raise
            print(f"submit: {what}: {err}; again in {poll:g} s", file=sys.stderr)
            sleep(poll)


def run(
    client,
    entrypoint: list[str],
    group: str | None,
    poll: float = 5.0,
    out=sys.stdout,
    sleep=time.sleep,
    patience: int = 60,
) -> int:
    """Submit (or follow) the job, stream its logs, wait for its end; return its exit status."""
    again = {"tries": patience, "poll": poll, "sleep": sleep}
    job_id = (
        retrying(lambda: running_job(client, group), "listing jobs", **again) if group else None
    )
    if job_id:
        print(f"submit: following {job_id}, a run of {group} that has not ended", file=sys.stderr)
    else:
        job_id = f"{group or 'submit'}-{uuid.uuid4().hex[:8]}"

        def submit_or_find():
            try:
                client.submit_job(
                    entrypoint=shlex.join(entrypoint),
                    submission_id=job_id,
                    metadata={GROUP_KEY: group} if group else None,
                )
            except Exception:
                if not exists(client, job_id):  # else an earlier try went through, unanswered
                    raise

        retrying(submit_or_find, f"submitting {job_id}", **again)
        print(f"submit: submitted {job_id}", file=sys.stderr)
    try:
        asyncio.run(_stream_logs(client, job_id, out))
    except Exception as err:  # the log stream is a convenience; the status is what counts
        print(f"submit: log stream of {job_id} lost ({err}); waiting for its end", file=sys.stderr)
    while True:
        info = retrying(lambda: client.get_job_info(job_id), f"status of {job_id}", **again)
        if status_of(info) in TERMINAL:
            break
        sleep(poll)
    code = exit_code(info)
    driver = "" if info.driver_exit_code is None else f", driver exit code {info.driver_exit_code}"
    print(f"submit: {job_id} {status_of(info)}{driver} (exit {code})", file=sys.stderr)
    return code


def main(argv: list[str] | None = None, connect=None) -> int:
    """The command line; ``connect(address)`` makes the job client (Ray's JobSubmissionClient)."""
    args = build_parser().parse_args(argv)
    try:
        if connect is None:
            from ray.job_submission import JobSubmissionClient as connect
        client = retrying(
            lambda: connect(args.address),
            f"connecting to {args.address}",
            tries=args.patience,
            poll=args.poll,
            sleep=time.sleep,
        )
        return run(client, args.entrypoint, args.group, poll=args.poll, patience=args.patience)
    except Exception as err:  # no head, no job server, a refused token, the job's status lost
        print(f"submit: {type(err).__name__}: {err} (exit {INTERNAL})", file=sys.stderr)
        return INTERNAL


if __name__ == "__main__":
    sys.exit(main())
