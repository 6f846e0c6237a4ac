"""The client commands of ``bananastand``: generate, batch, status, credits.

They talk to a server over HTTP only, so this module imports nothing of the server;
``bananastand.cli`` registers them onto its typer app with ``register``, and runs the
whole command line through ``run`` here.

Every error is one line on stderr (``error: what happened: what to do``), never a
traceback, and the exit status says what kind it was; scripts rely on these:

    0  ok
    1  a task failed: the generation failed, or a batch had failed or unknown lines
       (``credits audit``: a balance disagrees with the ledger)
    2  usage: bad arguments or options, a missing or unreadable file (``-i``, the batch
       file, its manifest), an output folder another ``batch`` is using, an unknown
       task/account/key (404), a refused input (422)
    3  auth or credits: the key is missing, wrong, revoked or expired (401), not enough
       credits (402)
    4  server or network: cannot connect, timed out, still rate limited after retries
       (429), maintenance (455), a server error (5xx, 505 included), a database that
       cannot be used (admin commands)

``serve``, ``worker`` and ``migrate`` exit 1 when they cannot start (a setting that does
not parse, a database that is refused, wrong or at another schema), as service managers
expect.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, Protocol, TypeVar, cast

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bananastand.client.batch import Batch, BatchReport
from bananastand.client.client import DEFAULT_HTTP_TIMEOUT, AsyncClient, Client
from bananastand.client.errors import (
    ApiError,
    AuthenticationError,
    BananastandError,
    FeatureDisabledError,
    GenerationFailedError,
    InsufficientCreditsError,
    MaintenanceError,
    NotFoundError,
    RateLimitError,
    TimeoutError,
    TransportError,
    ValidationError,
)
from bananastand.client.manifest import MANIFEST, BatchFileError
from bananastand.client.models import Task
from bananastand.client.pacing import RetryPolicy
from bananastand.client.session import DEFAULT_BASE_URL
from bananastand.client.waiting import DEFAULT_WAIT_TIMEOUT_S
from bananastand.contract import Lane

T = TypeVar("T")
#: Connections for quick requests (creates, uploads, downloads) in `batch`.
QUICK_POOL = 8

#: Exit statuses (the table in the module docstring).
OK, TASK_FAILED, USAGE, AUTH, SERVER = 0, 1, 2, 3, 4
#: ``serve``, ``worker`` and ``migrate`` that could not start, whatever the reason.
NOT_STARTED = 1

#: The SDK's policy, but for a person at a prompt: a server that cannot be reached is
#: said so within a second (the SDK's default retries it for ~10 s), and a Retry-After
#: longer than half a minute is reported ("try again in N s") rather than waited out.
RETRY = RetryPolicy(budget_s=30.0, unreachable_budget_s=1.0)

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def _http_url(value: str) -> str:
    """``--base-url`` must be an http(s) URL with a host: anything else would only fail
    later, at every retry, with httpx's words for it."""
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


def say(message: str) -> None:
    """``error: message`` as one line on stderr (whatever newlines ``message`` holds)."""
    stderr.print("error: " + " ".join(message.split()), markup=False)


def fail(message: str, status: int) -> NoReturn:
    say(message)
    raise typer.Exit(status)


#: (kind, exit status, what to do), the first that matches wins.
_KINDS: tuple[tuple[type[BananastandError], int, str], ...] = (
    (GenerationFailedError, TASK_FAILED, ""),
    (BatchFileError, USAGE, ""),
    (AuthenticationError, AUTH, "check --api-key or BANANASTAND_API_KEY"),
    (
        InsufficientCreditsError,
        AUTH,
        "the account needs credits (its operator: bananastand credits add), or use a test key",
    ),
    (NotFoundError, USAGE, "check the id"),
    (ValidationError, USAGE, "fix that and run again"),
    (RateLimitError, SERVER, "still rate limited after retries: try again later"),
    (MaintenanceError, SERVER, "the server is under maintenance: try again later"),
    (FeatureDisabledError, SERVER, "switched off on this server: ask its operator"),
    (ApiError, SERVER, "the server failed: try again later, or look at its log"),
    (TimeoutError, SERVER, "it may still finish: see bananastand status"),
    (TransportError, SERVER, "no answer from the server: try again later, or check --base-url"),
)


def explain(exc: BananastandError) -> tuple[str, int]:
    """What a person reads for a client error (what happened, what to do) and the exit
    status of its kind."""
    if isinstance(exc, TransportError) and exc.unreachable is not None:
        return (
            f"cannot reach {exc.url} ({exc.unreachable}): is the server running? "
            "set --base-url or BANANASTAND_BASE_URL",
            SERVER,
        )
    if isinstance(exc, RateLimitError) and exc.retry_after is not None:
        wait = f"try again in {exc.retry_after:.0f} s"
        return f"{exc}: still rate limited after retries: {wait}", SERVER
    for kind, status, hint in _KINDS:
        if isinstance(exc, kind):
            return (f"{exc}: {hint}" if hint else str(exc)), status
    return str(exc), SERVER


@contextmanager
def _errors() -> Iterator[None]:
    """A refused or failed call is one line on stderr and the exit status of its kind."""
    try:
        yield
    except BananastandError as exc:
        fail(*explain(exc))
    except OSError as exc:  # a local file: an image to upload, the folder to save in
        fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), USAGE)


class _ClickError(Protocol):
    exit_code: int

    def format_message(self) -> str: ...


def _click_error(name: str) -> type[Exception]:
    """A class of click's errors, from whichever click typer runs on (recent typers
    bundle their own copy of click, older ones use the ``click`` package)."""
    return next(kind for kind in typer.BadParameter.__mro__ if kind.__name__ == name)


def run(app: typer.Typer) -> NoReturn:
    """Run ``app`` as ``bananastand``: click's usage errors become one line too
    (``error: <what>: see '<command> --help'``), with click's exit status 2."""
    command = typer.main.get_command(app)
    try:
        status = command.main(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except _click_error("ClickException") as exc:
        error = cast(_ClickError, exc)
        if type(exc).__name__ != "NoArgsIsHelpError":  # else typer has printed the help
            message = error.format_message().rstrip(".")
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, _click_error("UsageError")) and ctx is not None:
                message += f": see '{ctx.command_path} --help'"
            say(message)
        sys.exit(error.exit_code)
    sys.exit(status if isinstance(status, int) else OK)


def _client(base_url: str, api_key: str | None) -> Client:
    return Client(base_url, api_key, retry=RETRY)


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
    with _errors(), _client(base_url, api_key) as client:
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
    with _errors(), _client(base_url, api_key) as client:
        _print_json(client.get(task_id).model_dump(mode="json"))


def credits_balance(
    ctx: typer.Context,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Without a subcommand: print your key's credit balance (GET /api/v1/chat/credit)."""
    if ctx.invoked_subcommand is not None:
        return
    with _errors(), _client(base_url, api_key) as client:
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
            retry=RETRY,
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

    with _errors():
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
