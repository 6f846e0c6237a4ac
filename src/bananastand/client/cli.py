"""The client commands of ``bananastand``: generate, batch, status, credits.

They talk to a server over HTTP only, so this module imports nothing of the server;
``bananastand.cli`` registers them onto its typer app with ``register``, and runs the
whole command line through ``client.exits.run`` (their exit statuses are listed there).

The SDK is imported inside the commands that use it: registering them, for ``--help`` or
for an admin command that shares the entry point, then costs none of its start-up.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bananastand.client.defaults import DEFAULT_BASE_URL, DEFAULT_WAIT_TIMEOUT_S
from bananastand.client.exits import TASK_FAILED, client_errors, run, stderr
from bananastand.contract import Lane

if TYPE_CHECKING:
    from bananastand.client.batch import BatchReport
    from bananastand.client.client import Client
    from bananastand.client.pacing import RetryPolicy

#: Connections for quick requests (creates, uploads, downloads) in `batch`.
QUICK_POOL = 8


def retry_policy() -> RetryPolicy:
    """The SDK's policy, but for a person at a prompt: a server that cannot be reached is
    said so within a second (the SDK's default retries it for ~10 s), and a Retry-After
    longer than half a minute is reported ("try again in N s") rather than waited out."""
    from bananastand.client.pacing import RetryPolicy

    return RetryPolicy(budget_s=30.0, unreachable_budget_s=1.0)


def _http_url(value: str) -> str:
    """``--base-url`` must be an http(s) URL with a host: anything else would only fail
    later, at every retry, with httpx's words for it. The default needs no check, and
    ``credits add`` (an admin command under the client's ``credits``) then loads no httpx."""
    if value == DEFAULT_BASE_URL:
        return value
    import httpx

    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise typer.BadParameter(f"{value!r} is not an http(s) URL (like {DEFAULT_BASE_URL})")
    return value


BaseUrl = Annotated[
    str,
    typer.Option(
        "--base-url",
        envvar="BANANASTAND_BASE_URL",
        help="The server (bananastand or hosted).",
        callback=_http_url,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="BANANASTAND_API_KEY", help="Your API key."),
]


def _client(base_url: str, api_key: str | None) -> Client:
    from bananastand.client.client import Client

    return Client(base_url, api_key, retry=retry_policy())


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def generate(
    prompt: Annotated[str, typer.Argument(help="What to make.")],
    image: Annotated[
        list[str] | None,
        typer.Option("-i", "--image", help="Reference image: a local file or an http(s) URL."),
    ] = None,
    aspect: Annotated[str | None, typer.Option("--aspect", help="1:1, 16:9, ..., auto.")] = None,
    resolution: Annotated[str | None, typer.Option(help="1K, 2K or 4K.")] = None,
    output_format: Annotated[str | None, typer.Option("--format", help="png, jpg, webp.")] = None,
    model: Annotated[str | None, typer.Option(help="Default: nano-banana-pro.")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the images.")] = Path(),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the task record instead of the paths.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = DEFAULT_WAIT_TIMEOUT_S,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Make one image: upload the references, create the task, wait, save the files."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from bananastand.client.models import Task

    with client_errors(), _client(base_url, api_key) as client:
        # The elapsed time ticks by itself: over an event stream, updates come only when
        # the state changes.
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
            disable=not stderr.is_terminal,  # else it leaves an empty line behind
        ) as status:
            line = status.add_task("submitting", total=None)

            def show(task: Task) -> None:
                status.update(line, description=f"{task.taskId}  {task.state}")

            result = client.generate(
                prompt,
                image or [],
                aspect_ratio=aspect,
                resolution=resolution,
                output_format=output_format,
                model=model,
                timeout=timeout,
                on_update=show,
            )
        paths = result.save(out)
    if as_json:
        _print_json(result.task.model_dump(mode="json"))
    else:
        for path in paths:
            print(path)


def status(
    task_id: Annotated[str, typer.Argument(help="The taskId.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Print a task's record (JSON)."""
    with client_errors(), _client(base_url, api_key) as client:
        _print_json(client.get(task_id).model_dump(mode="json"))


def credits_balance(
    ctx: typer.Context,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Without a subcommand: print your key's credit balance (GET /api/v1/chat/credit)."""
    if ctx.invoked_subcommand is not None:
        return
    with client_errors(), _client(base_url, api_key) as client:
        balance = client.credits()
    print(int(balance) if balance == int(balance) else balance)


def batch(
    prompts: Annotated[Path, typer.Argument(help="JSONL: one createTask input per line.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for images and manifest.")],
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs in flight.")] = 8,
    resubmit_unknown: Annotated[
        bool,
        typer.Option(
            "--resubmit-unknown",
            help="Send again the jobs whose createTask answer was lost (safe on bananastand; "
            "may make a second task on servers without Idempotency-Key support).",
        ),
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Send again the jobs whose task failed, as new tasks (new Idempotency-Keys, "
            "local images uploaded again; each is charged). Jobs that ended in a client-side "
            "error (a refused createTask, an unreadable image) are tried again on every run.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait per task.")] = (
        DEFAULT_WAIT_TIMEOUT_S
    ),
    lane: Annotated[
        Lane | None,
        typer.Option(
            help="bananastand's lane for every task: batch runs them through the upstream's "
            "Batch API within a day, at the batch price (raise --timeout to match)."
        ),
    ] = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Run every line of a JSONL file as a task; resumable (see manifest.jsonl in -o), one
    run per -o at a time."""
    import httpx
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from bananastand.client.async_client import AsyncClient
    from bananastand.client.batch import Batch
    from bananastand.client.client import DEFAULT_HTTP_TIMEOUT
    from bananastand.client.manifest import MANIFEST

    async def run() -> BatchReport:
        # Two pools. Quick requests (creates, uploads, downloads) share a small one:
        # httpcore checks every pooled connection on every request (measured with polling,
        # 64 jobs in flight: 5.7 ms of client CPU per job with httpx's default pool of 100,
        # 3.7 ms with 8). Each job's wait holds an event stream for as long as its task
        # runs, one connection per job in flight, in a pool of its own that keeps no idle
        # connections (those are what httpcore's bookkeeping walks, over and over): one
        # shared pool of 72 cost 14-16 ms per job in a 300-job sandbox batch, these two
        # 4.7 ms (polling, where each sandbox task was done by its first poll: 3.2 ms).
        # Quick requests beyond the pool's 8 wait in the client (``max_requests``), not in
        # httpcore's queue, which it rescans on every request: 4.4 -> 3.0 ms per job.
        tls = httpx.create_ssl_context()  # made once: loading the CA bundle takes ~15 ms
        limits = httpx.Limits(max_connections=QUICK_POOL, max_keepalive_connections=QUICK_POOL)
        pool = httpx.AsyncClient(timeout=DEFAULT_HTTP_TIMEOUT, limits=limits, verify=tls)
        stream_limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
        streams = httpx.AsyncClient(timeout=DEFAULT_HTTP_TIMEOUT, limits=stream_limits, verify=tls)
        client = AsyncClient(
            base_url,
            api_key,
            retry=retry_policy(),
            http=pool,
            stream_http=streams,
            max_streams=concurrency,
            max_requests=QUICK_POOL,
        )
        async with client:  # closes both pools
            with Batch.open(
                prompts,
                out,
                resubmit_unknown=resubmit_unknown,
                retry_failed=retry_failed,
                timeout=timeout,
                lane=lane.value if lane else None,
            ) as job:
                # One cheap call first: a wrong URL or key, or a server that is down, is
                # then one line before any line of the batch is touched.
                await client.credits()
                # Rich redraws on its own timer (10 a second); a job only sets the
                # numbers. The ETA is from the rate over the last minute (rich's
                # speed_estimate_period, at most its last 1000 finished jobs), so it
                # follows a server that speeds up or slows down.
                with Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[counts]}"),
                    TimeElapsedColumn(),
                    TextColumn("eta"),
                    TimeRemainingColumn(),
                    console=stderr,
                    speed_estimate_period=60.0,
                ) as progress:
                    counts = _counts(job.report)
                    bar = progress.add_task(
                        "batch", total=job.total, completed=job.report.settled, counts=counts
                    )

                    def show(report: BatchReport) -> None:
                        progress.update(bar, completed=report.settled, counts=_counts(report))

                    return await job.run(client, concurrency, on_change=show)

    with client_errors():
        report = _run_async(run)
    for line, reason in report.problems:
        stderr.print(f"line {line}: {reason}", markup=False)
    stderr.print(
        f"{report.succeeded} succeeded, {len(report.failed)} failed, "
        f"{len(report.unknown)} unknown; manifest: {out / MANIFEST}",
        markup=False,
    )
    if report.failed or report.unknown:
        raise typer.Exit(TASK_FAILED)


def _counts(report: BatchReport) -> str:
    """The progress bar's numbers ("failed" and "unknown" as the summary counts them)."""
    return (
        f"done {report.succeeded}  failed {len(report.failed)}  "
        f"unknown {len(report.unknown)}  running {report.running}"
    )


def _run_async(factory: Callable[[], Any]) -> Any:
    return asyncio.run(factory())


def register(app: typer.Typer, credits_app: typer.Typer) -> None:
    """Add the client commands to ``bananastand``; ``credits`` alone shows the balance."""
    app.command("generate")(generate)
    app.command("batch")(batch)
    app.command("status")(status)
    credits_app.callback(invoke_without_command=True)(credits_balance)


def main() -> None:
    """``python -m bananastand.client.cli``: the client commands without the server's."""
    app = typer.Typer(help="bananastand client.", no_args_is_help=True)
    credits_app = typer.Typer(help="Your credit balance.")
    app.add_typer(credits_app, name="credits")
    register(app, credits_app)
    run(app)


if __name__ == "__main__":
    main()
