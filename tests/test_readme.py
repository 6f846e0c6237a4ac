"""Acceptance: the README's shell examples, run as written against a live server.

Every ``sh`` block of README.md runs in bash, command by command, in a folder that looks
like a fresh checkout after ``make run`` (a ``.venv``, the files the examples name), with
``bananastand`` on PATH as ``. .venv/bin/activate`` puts it there. Placeholders such as
``task_...`` are filled from ``PLACEHOLDERS``; a block that cannot run here says why in a
``<!-- no-test: reason -->`` line above it, and one about one database only a
``<!-- sqlite-only: reason -->`` (or ``postgresql-only``) line. Each command must exit 0,
and where a ``# {...}`` comment follows it, its output must match that JSON: errors come
back with HTTP 200, so only the body tells a success from a refusal. In the comment,
``...`` inside a string stands for any text, and a bare ``...`` for any value or any
further members.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import DATABASE, database_env, make_key, running_server, with_accounts

README = Path(__file__).resolve().parent.parent / "README.md"
VENV = Path(sys.executable).parent.parent
#: What a bare ``...`` value of an expected output becomes: anything matches it.
ANY = "<any value>"
NO_TEST = re.compile(r"<!--\s*no-test:\s*(?P<reason>.*?)\s*-->")
ONLY_ON = re.compile(r"<!--\s*(?P<database>sqlite|postgresql)-only:\s*(?P<reason>.*?)\s*-->")


@dataclass(frozen=True)
class Command:
    text: str
    #: The output shown in the comment under it: ``{...}`` JSON, or the first line of
    #: plain output (``event: task``, ``whsec_...``).
    expected: str | None
    line: int


@dataclass(frozen=True)
class Block:
    line: int
    commands: list[Command]
    skip_reason: str | None
    #: (database, reason): the block runs in that database's pass of the suite only.
    only_on: tuple[str, str] | None = None


def sh_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        if lines[index].strip() != "```sh":
            index += 1
            continue
        start = index
        end = lines.index("```", start + 1)
        above = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = NO_TEST.search(above)
        only = ONLY_ON.search(above)
        blocks.append(
            Block(
                start + 1,
                split_commands(lines[start + 1 : end], start + 2),
                marker and marker["reason"],
                (only["database"], only["reason"]) if only else None,
            )
        )
        index = end + 1
    return blocks


def split_commands(lines: list[str], first_line: int) -> list[Command]:
    """Commands (with their ``\\`` continuations) and the comment lines under each."""
    found: list[tuple[list[str], list[str], int]] = []
    continued = False
    for number, line in enumerate(lines, first_line):
        stripped = line.strip()
        if continued:
            found[-1][0].append(line)
        elif stripped.startswith("#"):
            if found:
                found[-1][1].append(stripped[1:].strip())
        elif stripped:
            found.append(([line], [], number))
        continued = stripped.endswith("\\") and not stripped.startswith("#")
    return [
        Command("\n".join(text), expected_output(comments), number)
        for text, comments, number in found
    ]


def expected_output(comments: list[str]) -> str | None:
    """The JSON (balanced braces, over several lines) or first SSE line a comment shows."""
    if not comments:
        return None
    if comments[0].startswith("event:"):
        return comments[0]
    first_word = comments[0].split()[0]
    if "..." in first_word and not first_word.startswith("{"):
        return first_word  # a line of plain output, such as whsec_...
    if not comments[0].startswith("{"):
        return None  # prose
    text, depth = "", 0
    for comment in comments:
        text += comment
        depth += comment.count("{") - comment.count("}")
        if depth <= 0:
            break
    return text


def json_pattern(text: str) -> Any:
    """The comment's JSON, with each bare ``...`` member or value dropped or made a glob."""
    text = re.sub(r"(?<=[{,])\s*\.\.\.\s*,", "", text)  # {..., "a": 1}
    text = re.sub(r",\s*\.\.\.\s*(?=[}\]])", "", text)  # {"a": 1, ...}
    text = re.sub(r":\s*\.\.\.(?=\s*[,}])", f":{json.dumps(ANY)}", text)  # "a": ...
    return json.loads(text)


def assert_matches(expected: Any, actual: Any, where: str = "") -> None:
    if expected == ANY:
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for name, value in expected.items():
            assert name in actual, f"{where}.{name} is missing from {actual!r}"
            assert_matches(value, actual[name], f"{where}.{name}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        assert len(expected) == len(actual), f"{where}: {actual!r}"
        for number, (want, got) in enumerate(zip(expected, actual, strict=True)):
            assert_matches(want, got, f"{where}[{number}]")
    elif isinstance(expected, str) and "..." in expected:
        glob = ".*".join(re.escape(part) for part in expected.split("..."))
        assert isinstance(actual, str), f"{where}: {actual!r} is not a string"
        assert re.fullmatch(glob, actual, re.DOTALL), f"{where}: {actual!r} is not {expected!r}"
    else:
        assert type(expected) is type(actual), f"{where}: {actual!r} is not {expected!r}"
        assert expected == actual, f"{where}: {actual!r} is not {expected!r}"


@dataclass(frozen=True)
class Context:
    base_url: str
    key: str
    account_id: str
    spare_key_id: str
    task_id: str
    upload_url: str
    folder: Path
    env: dict[str, str]


def png_bytes(color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    data_dir = tmp_path_factory.mktemp("readme-data")
    folder = tmp_path_factory.mktemp("readme-checkout")
    # As `make run` serves on loopback: callbacks and image_input may reach this machine.
    with running_server(
        data_dir,
        allow_private_networks=["127.0.0.0/8", "::1"],
        create_rate="20/second",
        read_rate="20/second",
    ) as server:
        key = server.key()
        auth = {"Authorization": f"Bearer {key}"}
        me = server.client.get("/api/v1/chat/credit", headers=auth).json()
        assert me["code"] == 200, me
        account_id = with_accounts(server, lambda a: a.authenticate(f"Bearer {key}")).account_id
        spare = make_key(server.data_dir, account_id=account_id)
        spare_id = with_accounts(server, lambda a: a.authenticate(f"Bearer {spare}")).id
        task_id = server.create(key, {"model": "nano-banana-pro", "input": {"prompt": "x"}})[
            "data"
        ]["taskId"]
        server.wait(key, task_id)
        uploaded = server.client.post(
            "/api/file-stream-upload",
            headers=auth,
            files={"file": ("ref2.png", png_bytes("blue"), "image/png")},
            data={"uploadPath": "readme"},
        ).json()
        assert uploaded["code"] == 200, uploaded
        (folder / ".venv").symlink_to(VENV)
        (folder / "cat.png").write_bytes(png_bytes("orange"))
        (folder / "ref1.png").write_bytes(png_bytes("yellow"))
        (folder / "prompts.jsonl").write_text(
            '{"prompt": "a banana"}\n{"prompt": "a pear", "aspect_ratio": "16:9"}\n'
        )
        env = {
            **os.environ,
            "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "BANANASTAND_BASE_URL": server.base_url,
            "BANANASTAND_API_KEY": key,
            "BANANASTAND_DATA_DIR": str(server.data_dir),
            **database_env(server.data_dir),
            "BANANASTAND_LOG_FORMAT": "json",
            "KEY": key,
        }
        yield Context(
            server.base_url,
            key,
            account_id,
            spare_id,
            task_id,
            uploaded["data"]["downloadUrl"],
            folder,
            env,
        )


#: What stands in the README for values only a running server knows.
PLACEHOLDERS: dict[str, Callable[[Context], str]] = {
    "http://127.0.0.1:8000": lambda c: c.base_url,
    "https://example.com/ref2.jpg": lambda c: c.upload_url,
    "bs_test_...": lambda c: c.key,
    "task_...": lambda c: c.task_id,
    "acct_...": lambda c: c.account_id,
    "key_...": lambda c: c.spare_key_id,
}


def fill(text: str, context: Context) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value(context))
    return text


BLOCKS = sh_blocks(README.read_text())


def test_the_readme_has_runnable_blocks_and_says_why_the_others_are_not() -> None:
    assert sum(block.skip_reason is None for block in BLOCKS) >= 5
    assert all(block.skip_reason != "" for block in BLOCKS)


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.skip_reason is None], ids=lambda b: f"README.md:{b.line}"
)
def test_readme_block(block: Block, context: Context) -> None:
    if block.only_on is not None and block.only_on[0] != DATABASE:
        pytest.skip(f"{block.only_on[0]} only: {block.only_on[1]}")
    outputs = context.folder / "outputs"
    outputs.mkdir(exist_ok=True)
    # One bash for the whole block (its variables carry from command to command), each
    # command's output and status kept apart.
    script = ["set -u", f"cd {context.folder}"]
    for number, command in enumerate(block.commands):
        out = outputs / f"{block.line}-{number}"
        script.append(
            f"{{\n{fill(command.text, context)}\n}} >{out} 2>{out}.err; echo $? >{out}.rc"
        )
    subprocess.run(["bash", "-c", "\n".join(script)], env=context.env, timeout=300, check=True)
    for number, command in enumerate(block.commands):
        out = outputs / f"{block.line}-{number}"
        shown = f"README.md:{command.line}: {command.text}"
        stdout, stderr = out.read_text(), Path(f"{out}.err").read_text()
        assert Path(f"{out}.rc").read_text().strip() == "0", f"{shown}\n{stdout}\n{stderr}"
        assert "Traceback" not in stderr, f"{shown}\n{stderr}"
        if command.expected is None:
            continue
        if not command.expected.startswith("{"):
            first_line = stdout.splitlines()[0] if stdout else ""
            assert_matches(command.expected, first_line, shown)
            continue
        expected = json_pattern(fill_urls(command.expected, context))
        try:
            actual = json.loads(stdout)
        except json.JSONDecodeError:
            pytest.fail(f"{shown}\nprinted no JSON:\n{stdout}\n{stderr}")
        assert_matches(expected, actual, shown)


def fill_urls(text: str, context: Context) -> str:
    """Only the server's address is filled in an expected output; ``task_...`` there is
    a pattern, not a placeholder."""
    return text.replace("http://127.0.0.1:8000", context.base_url)


def test_the_matcher_refuses_what_differs() -> None:
    pattern = json_pattern('{"code":200,"data":{"taskId":"task_...", ...},"n":...}')
    assert_matches(pattern, {"code": 200, "data": {"taskId": "task_a", "x": 1}, "n": None})
    for wrong in (
        {"code": 401, "data": {"taskId": "task_a"}, "n": 1},
        {"code": 200, "data": {"taskId": "tusk_a"}, "n": 1},
        {"code": 200, "data": None, "n": 1},
        {"code": 200, "data": {"taskId": "task_a"}},
        {"code": True, "data": {"taskId": "task_a"}, "n": 1},
    ):
        with pytest.raises(AssertionError):
            assert_matches(pattern, wrong)
