"""Generation: the served model and tokenizer, turning conversations into replies within a deadline."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import threads
from ftctl.backends.local.serving.request import (
    MIN_SAMPLING_TEMPERATURE,
    PROMPT_CHARS_SLACK,
    BadRequest,
    GenerationTimeout,
)
from ftctl.errors import FtctlError
from ftctl.models.layout import resolve_hf_dir

if TYPE_CHECKING:  # pragma: no cover
    pass

log = logging.getLogger("ftctl.server")

END_TOKEN = "<|end|>"


class Replies(list):  # type: ignore[type-arg]
    """The replies of one generate call, and `model_s`: the seconds the model thread spent on them
    (templates, tokenizing, `model.generate`, decoding), which the endpoint reports in its
    Server-Timing header. A slice (a batched request's share) keeps the call's `model_s`."""

    def __init__(self, replies: list[str], model_s: float) -> None:
        super().__init__(replies)
        self.model_s = model_s

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return Replies(item, self.model_s) if isinstance(index, slice) else item


def server_timing(model_s: float | None) -> dict[str, str] | None:
    """The reply headers that report the model's time (`Server-Timing: model;dur=<ms>`), if known."""
    return None if model_s is None else {"Server-Timing": f"model;dur={model_s * 1000:.2f}"}


class Generator:
    """Loads a causal LM + tokenizer and turns conversations into replies.

    `generate` is thread-safe: calls are serialized with a lock. It is the seam for a later
    improvement that gathers concurrent requests into one `model.generate` call; within one call
    the conversations are already generated in left-padded batches of at most `max_batch_size`.
    """

    def __init__(self, model_dir: Path, *, device: str = "cpu", max_batch_size: int = 8) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model_dir = Path(model_dir)
        self.device = device
        self.max_batch_size = max_batch_size
        self.model: Any = None
        self.tokenizer: Any = None
        self.eos_token_ids: list[int] = []
        self.pad_token_id: int | None = None
        self.max_positions: int | None = None
        self.max_prompt_chars: int | None = None  # longer prompts are refused without tokenizing
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._criterion_class: Any = None
        # Every torch call runs on this one thread. With OpenMP, each thread that calls into torch gets
        # its own team of worker threads; two teams on two cores spin against each other, which made a
        # 15 ms generate take 39 ms once requests arrived on different threads.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftctl-model")

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        """Load the model and tokenizer (on the model thread)."""
        self._model_thread.submit(self._load).result()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no progress bars in the server log
        hf_dir = resolve_hf_dir(self.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
        dtype = torch.float32 if self.device == "cpu" else "auto"
        model: Any = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype)
        model.to(self.device)
        model.eval()

        eos: list[int] = []

        def add(ids: Any) -> None:
            for token_id in ids if isinstance(ids, (list, tuple)) else [ids]:
                if isinstance(token_id, int) and token_id not in eos:
                    eos.append(token_id)

        add(tokenizer.get_vocab().get(END_TOKEN))
        add(tokenizer.eos_token_id)
        add(getattr(model.generation_config, "eos_token_id", None))
        if not eos:
            raise FtctlError(f"{hf_dir}: the tokenizer has no end-of-turn ({END_TOKEN}) or eos token")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos[0])
        tokenizer.padding_side = "left"
        if not getattr(tokenizer, "chat_template", None):
            raise FtctlError(f"{hf_dir}: the tokenizer has no chat template")

        class _Deadline(StoppingCriteria):
            """Stops generation when the request's deadline passes or it is cancelled."""

            def __init__(self, deadline: float | None, events: list[threading.Event]) -> None:
                self.deadline = deadline
                self.events = events
                self.fired = False

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                if (self.deadline is not None and time.monotonic() >= self.deadline) or any(
                    e.is_set() for e in self.events
                ):
                    self.fired = True
                return torch.full(
                    (input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device
                )

        self._criterion_class = _Deadline
        self.eos_token_ids = eos
        self.pad_token_id = tokenizer.pad_token_id
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        if self.max_positions:
            longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
            self.max_prompt_chars = self.max_positions * max(1, longest) * PROMPT_CHARS_SLACK
        self.tokenizer = tokenizer
        # torch's thread count, chosen here on the model thread, where every torch call runs (OpenMP's
        # count is per thread) and after the load, which the measurement overlaps (ftctl.threads)
        threads.apply()
        self.model = model  # last: `loaded` turns true only when everything above is in place

    def stop(self) -> None:
        """Make any generation in progress stop at its next token (server shutdown)."""
        self._stopping.set()

    def prompt(self, conversation: list[dict]) -> str:
        """The conversation as prompt text. BadRequest if the chat template refuses it (a role order
        the model does not take) or it is far longer than the model's context (see
        PROMPT_CHARS_SLACK): such a prompt is refused before tokenizing it."""
        from jinja2.exceptions import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
        except TemplateError as exc:
            raise BadRequest(f"the model's chat template refused the conversation: {exc}") from None
        if self.max_prompt_chars is not None and len(text) > self.max_prompt_chars:
            raise BadRequest(
                f"the prompt is {len(text):,} characters, far more than this model takes "
                f"({self.max_positions} tokens)"
            )
        return text

    def _generation_config(self, settings: dict[str, Any]) -> Any:
        from transformers import GenerationConfig

        do_sample = bool(settings.get("do_sample", False))
        temperature = settings.get("temperature")
        if do_sample and temperature is not None and temperature < MIN_SAMPLING_TEMPERATURE:
            do_sample = False  # temperature 0 means greedy, as most serving stacks read it
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings["max_new_tokens"],
            "do_sample": do_sample,
            "eos_token_id": list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
        }
        if do_sample:
            for name in ("temperature", "top_p", "top_k"):
                if settings.get(name) is not None:
                    kwargs[name] = settings[name]
        if settings.get("repetition_penalty") is not None:
            kwargs["repetition_penalty"] = settings["repetition_penalty"]
        return GenerationConfig(**kwargs)

    def generate(
        self,
        conversations: list[list[dict]],
        params: dict[str, Any],
        *,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        streamer: Any = None,
    ) -> list[str]:
        """One reply per conversation. `params` are normalized settings (see normalize_parameters).

        `deadline` is a time.monotonic() value; past it (or once `cancel` is set) generation stops and
        GenerationTimeout is raised. Raises BadRequest when a prompt does not fit the model.
        `streamer` (a transformers streamer, one conversation only) receives the tokens as they come.
        """
        if deadline is not None:
            wait: float | None = max(0.0, deadline - time.monotonic()) + 1.0
        else:
            wait = None
        future = self._model_thread.submit(
            self._generate, conversations, params, deadline=deadline, cancel=cancel, streamer=streamer
        )
        try:
            return future.result(timeout=wait)
        except FutureTimeout:
            future.cancel()
            raise GenerationTimeout("timed out waiting for the model") from None

    def _check_generate(
        self,
        conversations: list[list[dict]],
        params: dict[str, Any],
        deadline: float | None,
        cancel: threading.Event | None,
        streamer: Any,
    ) -> None:
        """Refuse a generation before it waits for the model: past its deadline or cancelled
        (GenerationTimeout), no model, a reply longer than the model's context, or a misused streamer."""
        if (deadline is not None and time.monotonic() >= deadline) or (
            cancel is not None and cancel.is_set()
        ):
            raise GenerationTimeout("the request timed out while waiting for the model")
        if not self.loaded:
            raise RuntimeError("the model is not loaded")
        if self.max_positions and params["max_new_tokens"] > self.max_positions:
            raise BadRequest(
                f"parameter max_new_tokens must be at most {self.max_positions}, the model's context "
                f"length (got {params['max_new_tokens']})",
                param="max_new_tokens",
            )
        if streamer is not None and len(conversations) != 1:
            raise ValueError("a streamer takes exactly one conversation")

    def _generate(
        self,
        conversations: list[list[dict]],
        params: dict[str, Any],
        *,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        streamer: Any = None,
    ) -> list[str]:
        self._check_generate(conversations, params, deadline, cancel, streamer)
        import torch

        events = [self._stopping] + ([cancel] if cancel is not None else [])
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            raise GenerationTimeout("timed out waiting for the model")
        started = time.perf_counter()
        try:
            changed = threads.adapt()  # on the model thread: torch's thread count is per OpenMP thread
            if changed is not None:
                log.info(changed.describe())
            prompts = [self.prompt(conv) for conv in conversations]
            generation_config = self._generation_config(params)
            if params.get("seed") is not None:
                torch.manual_seed(params["seed"])
            replies: list[str] = []
            with torch.inference_mode():
                for start in range(0, len(prompts), self.max_batch_size):
                    batch = prompts[start : start + self.max_batch_size]
                    criterion = self._criterion_class(deadline, events)
                    replies.extend(self._generate_batch(batch, generation_config, criterion, streamer))
            return Replies(replies, time.perf_counter() - started)
        finally:
            self._lock.release()

    def _generate_batch(
        self, prompts: list[str], generation_config: Any, criterion: Any, streamer: Any
    ) -> list[str]:
        """The replies to one left-padded batch of prompts (under the lock, in inference mode)."""
        from transformers import StoppingCriteriaList

        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_len = encoded["input_ids"].shape[1]
        if self.max_positions and prompt_len >= self.max_positions:
            raise BadRequest(
                f"the prompt is {prompt_len} tokens; this model takes at most "
                f"{self.max_positions - 1} before it generates"
            )
        output = self.model.generate(
            **{k: v.to(self.device) for k, v in encoded.items()},
            generation_config=generation_config,
            stopping_criteria=StoppingCriteriaList([criterion]),
            **({"streamer": streamer} if streamer is not None else {}),
        )
        if criterion.fired:
            raise GenerationTimeout("generation stopped: deadline passed or cancelled")
        return list(self.tokenizer.batch_decode(output[:, prompt_len:], skip_special_tokens=True))
