"""The deployed endpoint as a user meets it: credentials, chat, score --file and OpenAI clients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CONVERSATION = "What is the capital of France?\nAnd of Italy?\n/reset\nWhat is 2 plus 3?\n/exit\nnever sent\n"


def test_credentials_show_the_scoring_uri_and_the_key(deployed) -> None:
    key = deployed.key()
    creds = deployed.json("credentials")
    deploy = deployed.json("status")["stages"][6]["outputs"]
    assert creds["scoring_uri"] == deploy["scoring_uri"] and creds["scoring_uri"].endswith("/score")
    assert creds["primary_key"] == key
    assert creds["openai_base_url"] == f"{deploy['url']}/v1"
    assert creds["endpoint_name"] == deploy["endpoint_name"] and creds["deployment_name"] == "demo"
    assert creds["model"] == "ftctl-tiny-phi3-chat-ultrachat-200k:1"
    text = deployed("credentials")
    assert f"primary_key      {key}" in text.stdout.splitlines()
    assert "keep the key secret" in text.stderr


def test_only_credentials_shows_the_key(deployed) -> None:
    key = deployed.key()
    for args in (["status"], ["--json", "status"], ["deploy"], ["--json", "deploy"], ["metrics"]):
        result = deployed(*args)
        assert key not in result.stdout + result.stderr, args
    assert key not in (deployed.workspace / "state.json").read_text()
    for log in deployed.workspace.glob("endpoints/*/server.log"):
        assert key not in log.read_text()


def test_credentials_without_an_endpoint(trained) -> None:
    result = trained("credentials", code=2)
    assert "there is no endpoint: deploy is pending" in result.stderr and "`ftctl deploy`" in result.stderr
    assert "primary_key" not in trained("--json", "credentials", code=2).stdout
    assert "there is no endpoint" in trained("chat", input="hi\n", code=2).stderr
    assert "there is no endpoint" in trained("score", "--file", "-", input="[]", code=2).stderr
    # (after `ftctl teardown`: see test_notebook)


def test_chat_piped_three_turns(deployed) -> None:
    """A real `ftctl chat` process reading a piped conversation line by line."""
    done = subprocess.run(
        [sys.executable, "-m", "ftctl", "chat", "--temperature", "0", "--max-new-tokens", "24"],
        input=CONVERSATION,
        capture_output=True,
        text=True,
        env=deployed.env(),
        cwd=deployed.root,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answers = [line for line in done.stdout.splitlines() if line.startswith("assistant> ")]
    assert len(answers) == 3 and all(len(a) > len("assistant> ") for a in answers), done.stdout
    assert len([line for line in done.stderr.splitlines() if line.strip().endswith(" ms)")]) == 3
    assert "(new conversation)" in done.stderr
    assert "chat ended after 3 turns" in done.stderr
    assert "you> " not in done.stderr  # no prompts when stdin is not a terminal
    assert deployed.key() not in done.stdout + done.stderr


def test_chat_json_lines(deployed) -> None:
    result = deployed(
        "--json", "chat", "--temperature", "0", "--max-new-tokens", "8", input="Hi\nHello again\n"
    )
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert [t["turn"] for t in turns] == [1, 2] and [t["user"] for t in turns] == ["Hi", "Hello again"]
    assert all(isinstance(t["assistant"], str) and t["latency_ms"] > 0 for t in turns)


def test_chat_keeps_the_conversation_and_resets(fake_endpoint) -> None:
    """What the chat sends: the whole conversation each turn, a fresh one after /reset."""
    from ftctl.chat import ChatSession, run_chat

    ep, requests = fake_endpoint
    session = ChatSession(ep, {"max_new_tokens": 5}, timeout_s=10, system="be brief")
    said: list[str] = []
    answered: list[tuple[int, str, str]] = []
    lines = ["hello", "  ", "second", "/help", "/reset", "third", "/bogus", "/exit", "not read"]
    turns = run_chat(
        session,
        iter(lines),
        say=said.append,
        answer=lambda turn, user, reply, ms: answered.append((turn, user, reply)),
        interactive=False,
        waiting=lambda: __import__("contextlib").nullcontext(),
    )
    assert turns == 3
    sent = [r["input_data"]["input_string"][0] for r in requests]
    assert sent[0] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert sent[1] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "reply 1"},
        {"role": "user", "content": "second"},
    ]
    assert sent[2] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "third"}]
    assert all(r["input_data"]["parameters"] == {"max_new_tokens": 5} for r in requests)
    assert answered == [(1, "hello", "reply 1"), (2, "second", "reply 2"), (3, "third", "reply 3")]
    assert said[0].startswith("/reset starts a new conversation") and said[1] == "(new conversation)"
    assert said[2].startswith("unknown command /bogus")


def test_chat_error_ends_a_piped_chat_but_not_an_interactive_one(fake_endpoint) -> None:
    from ftctl.chat import ChatSession, EndpointError, run_chat

    ep, requests = fake_endpoint
    said: list[str] = []

    def chat(interactive: bool) -> int:
        session = ChatSession(ep, {"max_new_tokens": 5}, timeout_s=10)
        return run_chat(
            session,
            iter(["fail please", "fine"]),
            say=said.append,
            answer=lambda *a: None,
            interactive=interactive,
            waiting=lambda: __import__("contextlib").nullcontext(),
        )

    with pytest.raises(EndpointError) as raised:
        chat(interactive=False)
    assert raised.value.status == 400 and raised.value.exit_code == 2
    assert chat(interactive=True) == 1
    assert said == ["error: the endpoint answered HTTP 400: parameter nope is bad"]
    assert requests[-1]["input_data"]["input_string"][0] == [{"role": "user", "content": "fine"}]


def test_score_file(deployed, tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    body = {
        "input_data": {
            "input_string": [[{"role": "user", "content": "What is the capital of France?"}]],
            "parameters": {"do_sample": False, "max_new_tokens": 12},
        },
        "params": {},
    }
    request.write_text(json.dumps(body))
    before = deployed.json("status")["stages"][7]
    result = deployed("score", "--file", str(request))
    assert result.stdout.startswith('raw response: {"output":') and "\noutput: " in result.stdout
    data = deployed.json("score", "--file", str(request))
    assert data["http_status"] == 200 and isinstance(data["response"]["output"], str)
    assert data["output"] == data["response"]["output"] and data["latency_ms"] > 0
    assert deployed.json("status")["stages"][7] == before  # the stage state is left alone
    # A bare conversation on stdin.
    piped = deployed.json("score", "--file", "-", input='[{"role": "user", "content": "Hi"}]')
    assert piped["http_status"] == 200 and piped["request_file"] == "-"


def test_score_file_errors(deployed, tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"input_data": \n  nope}')
    assert (
        f"--file {bad_json}:2:3: not valid JSON" in deployed("score", "--file", str(bad_json), code=2).stderr
    )
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"hello": 1}')
    assert "expected a scoring request" in deployed("score", "--file", str(wrong), code=2).stderr
    assert "cannot read it" in deployed("score", "--file", str(tmp_path / "missing.json"), code=2).stderr
    refused = tmp_path / "refused.json"
    refused.write_text(json.dumps({"input_data": {"input_string": [[{"role": "user", "content": "x"}]],
                                                  "parameters": {"nope": 1}}}))  # fmt: skip
    result = deployed("score", "--file", str(refused), code=2)
    assert "the endpoint answered HTTP 400: unknown parameter: nope" in result.stderr


def test_openai_client_gets_a_chat_completion(deployed) -> None:
    openai = pytest.importorskip("openai")
    creds = deployed.json("credentials")
    client = openai.OpenAI(base_url=creds["openai_base_url"], api_key=creds["primary_key"], max_retries=0)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(
        model=creds["model"], messages=messages, max_tokens=16, temperature=0
    )
    assert reply.object == "chat.completion" and reply.model == creds["model"]
    text = reply.choices[0].message.content
    assert isinstance(text, str) and text and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    # Greedy: the same answer as the Azure-style /score route gives.
    score = deployed.json("score", "--file", "-", input=json.dumps(
        {"input_data": {"input_string": [messages], "parameters": {"do_sample": False, "max_new_tokens": 16}}}
    ))  # fmt: skip
    assert score["output"] == text

    stream = client.chat.completions.create(
        model=creds["model"], messages=messages, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) >= 2  # token by token, not one blob
    assert "".join(pieces) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    )

    assert [m.id for m in client.models.list()] == [creds["model"]]
    wrong = openai.OpenAI(base_url=creds["openai_base_url"], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="x", messages=messages)
    with pytest.raises(openai.BadRequestError, match="n is not supported"):
        client.chat.completions.create(model="x", messages=messages, n=2)


def test_readme_openai_snippet_runs(deployed, tmp_path: Path) -> None:
    """The README's Python example, as written, against the local endpoint."""
    pytest.importorskip("openai")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("```python\n", readme.index("## Talking to the fine-tuned model"))
    snippet = readme[start + len("```python\n") : readme.index("```", start + 10)]
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=deployed.env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the snippet printed no reply"


def test_score_shows_the_expected_reply_and_what_the_demo_model_is(deployed) -> None:
    """The dataset's own reply is shown beside the model's; the built-in model said what it is once, at
    pick-model, and not again (test_second_day: the note once per workspace)."""
    done = deployed("score")
    assert "output: " in done.stdout and "expected (the dataset's reply): " in done.stdout
    assert "~1M-parameter demo model" not in done.stderr
    score = deployed.json("score")
    assert isinstance(score["outputs"]["expected_output"], str) and score["outputs"]["expected_output"]
    chat = deployed("chat", input="Hi\n")
    assert "~1M-parameter demo model" not in chat.stderr
    assert "assistant> \n" not in chat.stdout and not chat.stdout.startswith("\n")


ML_LIBRARIES = ("torch", "transformers", "tokenizers", "peft", "mlflow")


def test_deploy_reuses_the_trainers_template_check_and_loads_no_ml_library(scratch) -> None:
    # The trainer checked the chat template of the model it saved (submit's outputs); deploy finds the
    # registered folder in MLflow's store with sqlite3: it starts the server without loading either.
    recorded = scratch.outputs("submit")["template_check"]
    assert recorded["mismatches"] == [] and recorded["turns"] > 0
    done, imported = scratch.imports("deploy", of=ML_LIBRARIES)
    assert not imported, done.stderr
    assert f"chat template: training and the endpoint agree on {recorded['turns']} replies" in done.stderr
    assert "endpoint ready" in done.stderr
    scratch("teardown")


def test_a_registered_template_changed_after_training_is_checked_again(scratch) -> None:
    from ftctl.backends.local.workspace import LocalWorkspace
    from ftctl.models.layout import resolve_hf_dir

    registered = scratch.outputs("register")
    ws = LocalWorkspace(scratch.workspace)
    folder = ws.registered_folder(registered["model_name"], registered["version"])
    assert folder is not None
    # Its chat template (transformers keeps it in chat_template.jinja) without the newline after a role.
    (resolve_hf_dir(folder) / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    refused = scratch("deploy", code=2)
    assert "the endpoint would format conversations differently from training" in refused.stderr
    assert not list((scratch.workspace / "secrets").glob("*.key"))
