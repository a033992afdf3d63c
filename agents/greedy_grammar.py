"""Greedy decoding under a GBNF grammar, asking the grammar about one token first.

llama-cpp-python's sampler chain applies the grammar to the whole vocabulary before it
picks a token: for SmolLM2's 49,152 tokens that is several times the cost of evaluating
the token itself (issue 7's ballot profile: 28 ms a token against 0.2 ms without the
grammar). Greedy decoding picks the first token with the highest logit, so when that
token is one the grammar allows, applying the grammar first would have picked the same
one. ``GreedyGrammarSampler`` therefore shows the grammar the unconstrained best token
alone, and falls back to the whole vocabulary only when the grammar refuses it: the
same tokens as ``add_grammar`` + ``add_greedy`` (a test compares them), much cheaper.
llama.cpp's own common sampler makes the same check (``grammar_first=false``).

Only for temperature 0 and no repetition penalties: with sampling, checking the drawn
token first changes the distribution, and the runtime keeps the chain there.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class GreedyGrammarSampler:
    """One answer's grammar state over ``llm`` (a ``llama_cpp.Llama``). Not thread-safe;
    ``close()`` frees the grammar."""

    def __init__(self, llm, grammar_text: str, root: str = "root") -> None:
        import llama_cpp  # noqa: PLC0415 (heavy: only with a model)

        self._lib = llama_cpp
        self._ctx = llm._ctx.ctx
        self._n_vocab = llm.n_vocab()
        self._grammar = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar_text.encode(), root.encode())
        if not self._grammar:
            raise ValueError("llama.cpp could not parse the grammar")
        self._one = (llama_cpp.llama_token_data * 1)()
        self._all = (llama_cpp.llama_token_data * self._n_vocab)()
        # The grammar only masks logits (to -inf), never reorders or touches ids and p:
        # those are set once, and an index into the array is the token.
        self._all_view = np.frombuffer(self._all, dtype=_TOKEN_DATA)
        self._all_view["id"] = np.arange(self._n_vocab, dtype=np.int32)
        self._all_view["p"] = 0.0
        self.fallbacks = 0  # tokens for which the grammar had to see the whole vocabulary

    def next_token(self) -> int:
        """The token greedy decoding under the grammar picks after the last evaluated
        one; the grammar's state advances past it."""
        lib = self._lib
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, -1), shape=(self._n_vocab,))
        token = int(np.argmax(logits))
        one = self._one
        one[0].id, one[0].logit, one[0].p = token, float(logits[token]), 0.0
        candidates = lib.llama_token_data_array(one, 1, -1, False)
        lib.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        if math.isinf(one[0].logit):  # refused: the grammar judges every token
            self.fallbacks += 1
            masked = self._all_view["logit"]
            masked[:] = logits
            candidates = lib.llama_token_data_array(self._all, self._n_vocab, -1, False)
            lib.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
            token = int(np.argmax(masked))
            if math.isinf(masked[token]):
                raise ValueError("the grammar allows no token here")
        lib.llama_sampler_accept(self._grammar, token)
        return token

    def close(self) -> None:
        if self._grammar:
            self._lib.llama_sampler_free(self._grammar)
            self._grammar = None
