"""Run one training job: `python -m engine.train --spec resolved.json --out DIR [--resume]`.

No database, broker or MLflow: the job spec comes from a JSON file (validated by
`engine.spec.parse_job_spec`), checkpoints go to `DIR/checkpoints/checkpoint-<step>/`, the final model to
`DIR/final/`, and events are written to stdout, one JSON object per line (`engine.events`). Everything
else - library prints, warnings, progress bars - goes to stderr: file descriptor 1 is redirected to 2
before anything heavy is imported, and the event stream keeps a private duplicate of the original stdout.

Under torchrun (a job with `distributed.num_processes` > 1) every process runs this module; rank 0 writes
the event stream, the other ranks write only their `error` events, to stderr.

Exit status: 0 after `done`; 1 after an `error` event; 143 after SIGTERM (the loop stops at the next
micro-step boundary and saves nothing extra). After a success every rank meets the others and leaves the
process group; run as a program, the process then ends as soon as its output is flushed (`exit_process`). Settings read from the environment here, and only here:
`PAPERTRAIN_MODEL_CACHE` (bundled model cache), `PAPERTRAIN_UPLOADS_DIR` (uploaded datasets, default
`./var/uploads`). When `PAPERTRAIN_DATA_ROOTS` is set (a worker always sets it, maybe empty) the job is
confined: datasets only from uploads and those roots, `http` rewards only to `PAPERTRAIN_HTTP_REWARD_URLS`,
rows and files at most `PAPERTRAIN_MAX_ROW_BYTES` / `PAPERTRAIN_MAX_UPLOAD_BYTES`, local model paths only
under the data roots, `PAPERTRAIN_MODEL_ROOTS`, the model cache and `PAPERTRAIN_JOBS_DIR`. `PAPERTRAIN_VLLM_*`: where
the vLLM rollout server lives (`ServerOptions`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, NoReturn, TextIO

EXIT_OK, EXIT_ERROR, EXIT_SIGTERM = 0, 1, 143


def _claim_stdout() -> TextIO:
    """Keep a private handle on the real stdout for events; point fd 1 and sys.stdout at stderr."""
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="resolved job spec (JSON file)")
    parser.add_argument("--out", required=True, help="output folder (checkpoints/, final/)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    return parser.parse_args(argv)


def data_policy(env: Any) -> Any:
    """The reading limits of this process, from the environment the worker sets."""
    from engine.data.access import DataPolicy

    def split(name: str) -> tuple[str, ...]:
        return tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())

    defaults = DataPolicy()
    # a local model may come from a data root, a models root, the model cache or a job's output folder
    model_folders = [*split("PAPERTRAIN_DATA_ROOTS"), *split("PAPERTRAIN_MODEL_ROOTS")]
    model_folders += [p for p in (env.get("PAPERTRAIN_MODEL_CACHE"), env.get("PAPERTRAIN_JOBS_DIR")) if p]
    return DataPolicy(
        confined="PAPERTRAIN_DATA_ROOTS" in env,
        roots=tuple(Path(p).expanduser().resolve() for p in split("PAPERTRAIN_DATA_ROOTS")),
        uploads_dir=Path(env.get("PAPERTRAIN_UPLOADS_DIR", "var/uploads")).resolve(),
        max_row_bytes=int(env.get("PAPERTRAIN_MAX_ROW_BYTES") or defaults.max_row_bytes),
        max_file_bytes=int(env.get("PAPERTRAIN_MAX_UPLOAD_BYTES") or defaults.max_file_bytes),
        http_reward_urls=split("PAPERTRAIN_HTTP_REWARD_URLS"),
        model_folders=tuple(Path(p).expanduser().resolve() for p in model_folders),
    )


def run(args: argparse.Namespace, events: Any, stop: threading.Event | None = None) -> int:
    """Parse the spec, build the context, dispatch to the algorithm. Returns the exit status.

    `stop` is the flag a SIGTERM handler sets; the loops check it at every micro-step boundary."""
    from engine.algorithms.common import TrainContext, TrainingStopped, seed_everything

    stop = stop or threading.Event()
    ctx = None
    try:
        from engine.data.access import check_dataset, check_models, set_policy
        from engine.spec import parse_job_spec, unsupported

        set_policy(data_policy(os.environ))
        raw = json.loads(Path(args.spec).read_text(encoding="utf-8"))
        spec = parse_job_spec(raw)
        problem = unsupported(spec)
        if problem is not None:
            raise problem
        check_dataset("dataset", spec.dataset)
        check_dataset("eval_dataset", spec.eval_dataset)
        check_models(spec)
        from engine.spec.warnings import spec_warnings

        for warning in spec_warnings(spec):  # the same warnings the dry run shows
            events.log(f"{warning.param}: {warning.message}" if warning.param else warning.message, "warning")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        cache = os.environ.get("PAPERTRAIN_MODEL_CACHE")
        from engine.rollout.vllm_server import ServerOptions

        ctx = TrainContext.for_spec(
            spec,
            out,
            events=events,
            resume=args.resume,
            cache_dir=Path(cache) if cache else None,
            uploads_dir=Path(os.environ.get("PAPERTRAIN_UPLOADS_DIR", "var/uploads")),
            rollout_server=ServerOptions.from_env(os.environ),
            stop=stop,
        )
        from engine import distributed

        procs = distributed.init_from_env(ctx.device)
        wanted = spec.distributed.num_processes if spec.distributed is not None else 1
        if wanted != procs.world:  # a multi-process job run by hand as one process would train something else
            from engine.spec.base import SpecError

            raise SpecError(
                "distributed.num_processes",
                f"distributed.num_processes={wanted} but this engine runs as {procs.world} process(es): "
                f"start it under torchrun --nproc_per_node {wanted} (the worker does this)",
            )
        ctx.check_stop()
        if spec.hardware.accelerator == "gpu" and ctx.device.type != "cuda":
            events.log(
                "hardware.accelerator is 'gpu' but CUDA is not available here; running on the CPU", "warning"
            )
        seed_everything(ctx.seed)
        from engine.precision import describe

        events.log(
            f"{spec.algorithm} job on {spec.model}: device={ctx.device.type} {describe(ctx.precision)}"
            + (f" processes={procs.world}" if procs.active else "")
        )
        from engine.algorithms import get_algorithm

        final = get_algorithm(spec.algorithm).train(spec, ctx)
        ctx.release()
        events.done(step=ctx.step, final_path=str(final))
        return EXIT_OK
    except TrainingStopped:
        events.log(f"stopped by SIGTERM at step {ctx.step if ctx else 0}", level="warning")
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        events.error("interrupted", traceback.format_exc())
        return EXIT_ERROR
    except Exception as exc:  # every failure becomes a typed error event; the worker decides about retries
        from engine.errors import classify

        info = classify(exc)
        events.error(info.pop("message"), traceback.format_exc(), **info)
        return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    from engine.process import die_with_parent

    die_with_parent()  # a worker that dies (even by SIGKILL) takes its engine with it
    stream = _claim_stdout()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    from engine.distributed import from_env
    from engine.events import ErrorsOnly, EventWriter

    procs = from_env()
    # With several processes rank 0 speaks for the job; the others report only their errors, on stderr.
    events = EventWriter(stream) if procs.is_main else ErrorsOnly(sys.stderr)
    code = run(args, events, stop)
    if code == EXIT_OK:
        _leave_process_group()
    stream.flush()
    return code


def _leave_process_group() -> None:
    """Every rank meets the others, then leaves the group. Only after a success: after a failure or a stop
    another rank may be inside a collective that a barrier would be paired with."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """Flush and end the process without interpreter teardown, where threads of libraries (gloo's, kept
    alive by DeepSpeed's references) can abort a process whose job has finished."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_process(main())
