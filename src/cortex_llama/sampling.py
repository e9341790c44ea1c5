"""Samplers and sampler chains over llama.cpp's ``llama_sampler`` API.

Each :class:`Sampler` owns one ``llama_sampler``. Adding it to a
:class:`SamplerChain` hands ownership to the chain (the Python object is
disowned, its pointer is freed by the chain), so nothing is freed twice.
A :class:`PySampler` runs Python code on a numpy view of the candidates.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import _lib
from ._base import CallbackErrors, Owned
from ._lib import ffi, lib
from .context import Context
from ._cdef import LLAMA_DEFAULT_SEED
from .errors import GrammarError, LlamaError
from .model import Model, _why

__all__ = ["Sampler", "PySampler", "Candidates", "SamplerChain", "TOKEN_DATA_DTYPE", "biased_argmax",
           "GreedyPick"]

#: numpy layout of ``llama_token_data``
TOKEN_DATA_DTYPE = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA_DTYPE.itemsize == ffi.sizeof("llama_token_data")

def _seed(seed: int | None) -> int:
    if seed is None:
        return LLAMA_DEFAULT_SEED
    if not 0 <= int(seed) <= 0xFFFFFFFF:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    return int(seed)


def _prob(value: float, field: str, lo_open: bool = False) -> float:
    v = float(value)
    if not (0.0 < v <= 1.0 if lo_open else 0.0 <= v <= 1.0):
        raise ValueError(f"{field} must be in {'(0, 1]' if lo_open else '[0, 1]'}, got {value}")
    return v


class Sampler(Owned):
    """One llama.cpp sampler. Build them with the class methods (``Sampler.top_k(40)``).

    ``selects`` tells whether it picks a token (greedy, dist, mirostat): a
    :class:`SamplerChain` must contain one to sample.
    """

    _kind = "sampler"
    selects = False
    _bias: tuple[np.ndarray, np.ndarray] | None = None  # a logit-bias sampler's (ids, biases)

    def __init__(self, ptr: Any, name: str, *, selects: bool = False,
                 model: Model | None = None, keep_alive: Any = None) -> None:
        if ptr == ffi.NULL:
            raise LlamaError(_why(f"llama.cpp could not create the {name} sampler"))
        if keep_alive is None:
            self._own(ptr, lib.llama_sampler_free)
        else:
            # The destructor holds what C reads while freeing (a Python sampler's
            # interface and callbacks), so it outlives the free in any teardown order.
            def free_keeping(p: Any, _keep: Any = keep_alive) -> None:
                lib.llama_sampler_free(p)

            self._own(ptr, free_keeping)
        self.name = name
        self.selects = selects
        self._chain: SamplerChain | None = None
        self.model = model
        if model is not None:  # samplers that keep a pointer to the model's vocab
            model._adopt(self)

    def __repr__(self) -> str:
        return f"<Sampler {self.name}{' (closed)' if self.closed else ''}>"

    def _release(self, ptr: Any) -> None:
        if self._chain is None:
            super()._release(ptr)
        else:
            # The chain owns the C object. Closing a member (e.g. because its model
            # closed and a grammar would point into a freed vocab) closes the chain.
            self._chain.close()

    # -- constructors ------------------------------------------------------------
    @classmethod
    def greedy(cls) -> Sampler:
        """Pick the most likely token."""
        return cls(lib.llama_sampler_init_greedy(), "greedy", selects=True)

    @classmethod
    def dist(cls, seed: int | None = None) -> Sampler:
        """Draw from the distribution (seeded: reproducible)."""
        return cls(lib.llama_sampler_init_dist(_seed(seed)), "dist", selects=True)

    @classmethod
    def top_k(cls, k: int) -> Sampler:
        if int(k) < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables), got {k}")
        return cls(lib.llama_sampler_init_top_k(int(k)), "top-k")

    @classmethod
    def top_p(cls, p: float, min_keep: int = 1) -> Sampler:
        return cls(lib.llama_sampler_init_top_p(_prob(p, "top_p", True), int(min_keep)), "top-p")

    @classmethod
    def min_p(cls, p: float, min_keep: int = 1) -> Sampler:
        return cls(lib.llama_sampler_init_min_p(_prob(p, "min_p"), int(min_keep)), "min-p")

    @classmethod
    def typical(cls, p: float, min_keep: int = 1) -> Sampler:
        return cls(lib.llama_sampler_init_typical(_prob(p, "typical_p", True), int(min_keep)), "typical")

    @classmethod
    def temp(cls, t: float) -> Sampler:
        if float(t) < 0:
            raise ValueError(f"temperature must be >= 0, got {t}")
        return cls(lib.llama_sampler_init_temp(float(t)), "temp")

    @classmethod
    def temp_ext(cls, t: float, delta: float, exponent: float) -> Sampler:
        """Dynamic temperature (entropy-based)."""
        if float(t) < 0:
            raise ValueError(f"temperature must be >= 0, got {t}")
        return cls(lib.llama_sampler_init_temp_ext(float(t), float(delta), float(exponent)), "temp-ext")

    @classmethod
    def xtc(cls, p: float, t: float, min_keep: int = 1, seed: int | None = None) -> Sampler:
        """Exclude Top Choices."""
        return cls(lib.llama_sampler_init_xtc(_prob(p, "xtc_probability"), float(t), int(min_keep),
                                              _seed(seed)), "xtc")

    @classmethod
    def top_n_sigma(cls, n: float) -> Sampler:
        return cls(lib.llama_sampler_init_top_n_sigma(float(n)), "top-n-sigma")

    @classmethod
    def mirostat(cls, n_vocab: int, seed: int | None = None, tau: float = 5.0, eta: float = 0.1,
                 m: int = 100) -> Sampler:
        return cls(lib.llama_sampler_init_mirostat(int(n_vocab), _seed(seed), float(tau), float(eta),
                                                   int(m)), "mirostat", selects=True)

    @classmethod
    def mirostat_v2(cls, seed: int | None = None, tau: float = 5.0, eta: float = 0.1) -> Sampler:
        return cls(lib.llama_sampler_init_mirostat_v2(_seed(seed), float(tau), float(eta)),
                   "mirostat-v2", selects=True)

    @classmethod
    def adaptive_p(cls, target: float, decay: float, seed: int | None = None) -> Sampler:
        return cls(lib.llama_sampler_init_adaptive_p(float(target), float(decay), _seed(seed)),
                   "adaptive-p", selects=True)

    @classmethod
    def penalties(cls, n_vocab: int, last_n: int = 64, repeat: float = 1.0, frequency: float = 0.0,
                  presence: float = 0.0) -> Sampler:
        """Repeat/frequency/presence penalties over the last ``last_n`` tokens (0: off).

        llama.cpp's sampler has no "whole context" window (it turns -1 into 0,
        silently disabling the penalties), so pass the context size for that;
        negative ``last_n`` raises ``ValueError``.
        """
        if int(last_n) < 0:
            raise ValueError(f"penalty last_n must be >= 0 (0: off; for the whole context pass "
                             f"its size, e.g. ctx.n_ctx), got {last_n}")
        return cls(lib.llama_sampler_init_penalties(int(n_vocab), int(last_n), float(repeat),
                                                    float(frequency), float(presence)), "penalties")

    @classmethod
    def dry(cls, model: Model, multiplier: float = 0.8, base: float = 1.75, allowed_length: int = 2,
            penalty_last_n: int = -1, breakers: Sequence[str] = ("\n", ":", '"', "*")) -> Sampler:
        """DRY ("don't repeat yourself") repetition penalty."""
        raw = [ffi.new("char[]", b.encode()) for b in breakers]
        arr = ffi.new("const char *[]", raw) if raw else ffi.NULL
        ptr = lib.llama_sampler_init_dry(model.vocab._v(), float(multiplier), float(base),
                                         int(allowed_length), int(penalty_last_n), arr, len(raw))
        return cls(ptr, "dry", model=model)

    @classmethod
    def logit_bias(cls, n_vocab: int, bias: Mapping[int, float]) -> Sampler:
        """Add ``bias[token]`` to the logit of each token (``-inf`` bans it)."""
        arr = ffi.new("llama_logit_bias[]", max(1, len(bias)))
        for i, (tok, b) in enumerate(bias.items()):
            if not 0 <= int(tok) < n_vocab:
                raise ValueError(f"logit_bias token {tok} is outside the vocabulary [0, {n_vocab})")
            arr[i].token, arr[i].bias = int(tok), float(b)
        sampler = cls(lib.llama_sampler_init_logit_bias(int(n_vocab), len(bias), arr), "logit-bias")
        # the same bias in numpy, for SamplerChain's greedy fast path
        sampler._bias = (np.fromiter((int(t) for t in bias), dtype=np.int64, count=len(bias)),
                         np.fromiter((float(b) for b in bias.values()), dtype=np.float32,
                                     count=len(bias)))
        return sampler

    @classmethod
    def grammar(cls, model: Model, grammar: str, root: str = "root") -> Sampler:
        """Constrain output to a GBNF grammar.

        Raises :class:`GrammarError` carrying llama.cpp's parse message.
        """
        _lib.take_log_problems()
        ptr = lib.llama_sampler_init_grammar(model.vocab._v(), grammar.encode(), root.encode())
        if ptr == ffi.NULL:
            raise GrammarError(_why("invalid GBNF grammar"))
        return cls(ptr, "grammar", model=model)

    @classmethod
    def grammar_lazy(cls, model: Model, grammar: str, *, trigger_patterns: Sequence[str] = (),
                     trigger_tokens: Sequence[int] = (), root: str = "root") -> Sampler:
        """A grammar that starts constraining only after a trigger pattern or token."""
        pats = [ffi.new("char[]", p.encode()) for p in trigger_patterns]
        parr = ffi.new("const char *[]", pats) if pats else ffi.NULL
        toks = ffi.new("llama_token[]", [model.vocab.check_token(t) for t in trigger_tokens]) \
            if trigger_tokens else ffi.NULL
        _lib.take_log_problems()
        ptr = lib.llama_sampler_init_grammar_lazy_patterns(
            model.vocab._v(), grammar.encode(), root.encode(), parr, len(pats), toks, len(trigger_tokens))
        if ptr == ffi.NULL:
            raise GrammarError(_why("invalid GBNF grammar"))
        return cls(ptr, "grammar-lazy", model=model)

    @classmethod
    def infill(cls, model: Model) -> Sampler:
        """Fill-in-the-middle sampler (needs a model with FIM tokens)."""
        return cls(lib.llama_sampler_init_infill(model.vocab._v()), "infill", model=model)

    # -- use -------------------------------------------------------------------
    def accept(self, token: int) -> None:
        lib.llama_sampler_accept(self._check(), int(token))

    def reset(self) -> None:
        lib.llama_sampler_reset(self._check())

    @property
    def seed(self) -> int:
        """The seed in use (the random one drawn when created without a seed)."""
        return int(lib.llama_sampler_get_seed(self._check()))

    def apply(self, candidates: np.ndarray) -> int:
        """Apply this sampler alone to a ``TOKEN_DATA_DTYPE`` array, in place.

        Returns the new size of the candidate set (entries past it are dropped)
        and leaves the selected index, if any, in :attr:`last_selected`.
        """
        arr = np.ascontiguousarray(candidates, dtype=TOKEN_DATA_DTYPE)
        cur = ffi.new("llama_token_data_array *")
        cur.data = ffi.cast("llama_token_data *", ffi.from_buffer(arr))
        cur.size = arr.size
        cur.selected = -1
        cur.sorted = False
        lib.llama_sampler_apply(self._check(), cur)
        if arr is not candidates:
            candidates[...] = arr
        self.last_selected = int(cur.selected)
        return int(cur.size)


class Candidates:
    """The candidate tokens a :class:`PySampler` sees: numpy views over C memory.

    ``data`` is a structured array (``id``, ``logit``, ``p``) valid only during
    the callback. Modify logits in place, shrink with :attr:`size`, pick with
    :attr:`selected`.
    """

    def __init__(self, cur: Any) -> None:
        self._cur = cur
        self.data = np.frombuffer(ffi.buffer(cur.data, cur.size * TOKEN_DATA_DTYPE.itemsize),
                                  dtype=TOKEN_DATA_DTYPE)

    @property
    def ids(self) -> np.ndarray:
        return self.data["id"]

    @property
    def logits(self) -> np.ndarray:
        return self.data["logit"]

    @property
    def p(self) -> np.ndarray:
        return self.data["p"]

    @property
    def size(self) -> int:
        return int(self._cur.size)

    @size.setter
    def size(self, n: int) -> None:
        if not 1 <= n <= self.data.size:
            raise ValueError(f"candidate size must be in [1, {self.data.size}], got {n}")
        self._cur.size = n

    @property
    def selected(self) -> int:
        return int(self._cur.selected)

    @selected.setter
    def selected(self, index: int) -> None:
        if not 0 <= index < self._cur.size:
            raise ValueError(f"selected index {index} outside [0, {self._cur.size})")
        self._cur.selected = index

    @property
    def sorted(self) -> bool:
        return bool(self._cur.sorted)

    @sorted.setter
    def sorted(self, value: bool) -> None:
        self._cur.sorted = bool(value)


class PySampler(Sampler):
    """A sampler written in Python.

    ``apply(candidates: Candidates)`` modifies the candidates in place; set
    ``selects=True`` when it picks a token (``candidates.selected = i``).
    ``accept(token)`` and ``reset()`` are optional. An exception raised in a
    callback is stored and re-raised by ``SamplerChain.sample`` after the C call.
    """

    def __init__(self, apply: Callable[[Candidates], None], *,
                 accept: Callable[[int], None] | None = None,
                 reset: Callable[[], None] | None = None,
                 name: str = "python", selects: bool = False) -> None:
        self._apply_fn, self._accept_fn, self._reset_fn = apply, accept, reset
        self.errors = CallbackErrors()
        errors = self.errors
        self._name_c = ffi.new("char[]", name.encode())
        name_c = self._name_c

        def c_name(_s: Any) -> Any:
            return name_c

        def c_apply(_s: Any, cur: Any) -> None:
            n = cur.size
            try:
                apply(Candidates(cur))
                if not 0 < cur.size <= n:
                    raise ValueError(f"{name}: candidate size {cur.size} outside [1, {n}]")
                if selects and not 0 <= cur.selected < cur.size:
                    raise ValueError(f"{name}: declared selects=True but selected no token")
            except BaseException as exc:  # noqa: BLE001 - re-raised after the C call
                errors.store(exc)
                # keep C's invariants so that llama.cpp does not assert
                cur.size = max(1, min(int(cur.size), n))
                if selects or cur.selected >= cur.size:
                    cur.selected = 0

        def c_accept(_s: Any, token: int) -> None:
            if accept is not None:
                accept(token)

        def c_reset(_s: Any) -> None:
            if reset is not None:
                reset()

        self._callbacks = [
            ffi.callback("const char *(*)(const struct llama_sampler *)", c_name),
            ffi.callback("void(*)(struct llama_sampler *, llama_token)", c_accept,
                         onerror=errors.onerror),
            ffi.callback("void(*)(struct llama_sampler *, llama_token_data_array *)", c_apply),
            ffi.callback("void(*)(struct llama_sampler *)", c_reset, onerror=errors.onerror),
        ]
        iface = ffi.new("struct llama_sampler_i *")
        iface.name, iface.accept, iface.apply, iface.reset = self._callbacks
        self._iface = iface  # C keeps this pointer: it lives as long as we do
        super().__init__(lib.llama_sampler_init(iface, ffi.NULL), name, selects=selects,
                         keep_alive=(iface, self._callbacks))

    def clone_py(self) -> PySampler:
        return PySampler(self._apply_fn, accept=self._accept_fn, reset=self._reset_fn,
                         name=self.name, selects=self.selects)


def biased_argmax(logits: np.ndarray, biases: Sequence[tuple[np.ndarray, np.ndarray]]) -> int:
    """The first maximum of ``logits`` plus ``biases`` ((ids, float32 values) pairs),
    as llama.cpp's logit-bias and greedy samplers pick it. The biases are added in
    place (no copy of the row) and taken back after: ``logits`` ends as it was."""
    saved = [logits[ids] for ids, _ in biases]
    for ids, values in biases:
        logits[ids] += values
    tok = int(logits.argmax())
    for (ids, _), old in zip(reversed(biases), reversed(saved)):
        logits[ids] = old
    return tok


class GreedyPick:
    """The pick of a ``[logit-bias...] greedy`` chain over one logits row:
    :func:`biased_argmax` with its ``biases``, decided per row by the cheapest
    exact route.

    When every bias only lowers (<= 0, a ban included) and the row's own first
    maximum is not a biased token, that maximum is also the biased row's first
    maximum: float32 addition of a non-positive value never raises a logit, so
    no biased token can pass or tie it from before. Only the other rows pay for
    adding the biases.
    """

    __slots__ = ("biases", "kept_unless")

    def __init__(self, biases: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.biases = tuple(biases)
        lowers_only = all(bool((values <= 0).all()) for _, values in self.biases)
        #: the unbiased first maximum is the pick unless it is one of these (None: it
        #: may not be, some bias raises a logit)
        self.kept_unless: frozenset[int] | None = (
            frozenset(int(t) for ids, _ in self.biases for t in ids.tolist()) if lowers_only else None)

    def keeps(self, token: int) -> bool:
        """Whether ``token``, the unbiased row's first maximum, is also the pick."""
        unless = self.kept_unless
        return unless is not None and token not in unless

    def __call__(self, logits: np.ndarray) -> int:
        token = int(logits.argmax())
        return token if self.keeps(token) else biased_argmax(logits, self.biases)


class SamplerChain(Sampler):
    """An ordered chain of samplers; the last one usually selects (greedy or dist).

    ``SamplerChain([Sampler.top_k(40), Sampler.temp(0.8), Sampler.dist(42)])``.
    Samplers added to a chain belong to it: they are closed with it, cannot be
    added elsewhere, and closing one of them (or the model a grammar sampler
    reads) closes the whole chain.
    """

    _kind = "sampler chain"

    def __init__(self, samplers: Iterable[Sampler] = (), *, perf: bool = False) -> None:
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = not perf
        # strong references: C frees the members (and reads their interfaces) when
        # the chain is freed, so the destructor keeps them alive until then
        self._members: list[Sampler] = []
        self._py_members: list[PySampler] = []  # whose stored errors sample() re-raises
        self._perf = perf
        # the chain is [logit-bias...] greedy: sample() adds the biases and takes
        # numpy's argmax instead of building llama.cpp's n_vocab candidate array
        self._greedy_pick: GreedyPick | None = None
        super().__init__(lib.llama_sampler_chain_init(params), "chain", keep_alive=self._members)
        for s in samplers:
            self.add(s)

    def add(self, sampler: Sampler) -> SamplerChain:
        """Move ``sampler`` into the chain (the chain owns it from now on)."""
        chain_ptr = self._check()
        ptr = sampler._check()
        if sampler._chain is not None:
            raise ValueError(f"{sampler!r} already belongs to a chain")
        if sampler is self:
            raise ValueError("a chain cannot contain itself")
        lib.llama_sampler_chain_add(chain_ptr, ptr)
        ffi.gc(ptr, None)  # disowned: the chain frees it
        sampler._chain = self
        self._adopt(sampler)
        self._members.append(sampler)
        if isinstance(sampler, PySampler):
            self._py_members.append(sampler)
        if sampler.selects:
            self.selects = True
        *filters, last = self._members
        biases = [m._bias for m in filters if m._bias is not None]
        argmax_only = (not self._perf and last.name == "greedy"
                       and not isinstance(last, PySampler) and len(biases) == len(filters))
        self._greedy_pick = GreedyPick(biases) if argmax_only else None
        return self

    def __len__(self) -> int:
        return int(lib.llama_sampler_chain_n(self._check()))

    @property
    def samplers(self) -> list[Sampler]:
        self._check()
        return list(self._members)

    @property
    def argmax_biases(self) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """For a ``[logit-bias...] greedy`` chain, its (ids, biases) pairs (empty for
        plain greedy): :meth:`sample` takes numpy's argmax of the biased logits.
        None for every other chain."""
        return list(self._greedy_pick.biases) if self._greedy_pick is not None else None

    @property
    def greedy_pick(self) -> GreedyPick | None:
        """For a ``[logit-bias...] greedy`` chain, the :class:`GreedyPick` that
        :meth:`sample` applies to a logits row (without accepting: such a chain
        has no state). None for every other chain."""
        return self._greedy_pick

    def _reraise(self) -> None:
        for s in self._py_members:
            s.errors.reraise()

    def sample(self, ctx: Context, idx: int = -1) -> int:
        """Sample a token from output ``idx`` of ``ctx``'s last decode, and accept it.

        Raises ``ValueError`` when the chain has no selecting sampler (llama.cpp
        would abort the process), ``IndexError`` when output ``idx`` has no logits,
        and re-raises an exception from a :class:`PySampler`.
        """
        chain = self._check()
        if not self.selects:
            raise ValueError("this sampler chain has no selecting sampler (add greedy or dist)")
        with ctx.lock:
            cptr = ctx.handle
            row = lib.llama_get_logits_ith(cptr, idx)
            if row == ffi.NULL:
                _lib.take_log_problems()
                raise IndexError(f"no logits for output {idx}: request them with logits=True")
            if self._greedy_pick is not None:
                # llama.cpp's greedy sampler picks the first maximum, as np.argmax
                # does, and its logit-bias sampler adds float32 biases in place.
                return self._greedy_pick(
                    np.frombuffer(ffi.buffer(row, ctx.n_vocab * 4), dtype=np.float32))
            token = int(lib.llama_sampler_sample(chain, cptr, idx))
        self._reraise()
        return token

    def accept(self, token: int) -> None:
        lib.llama_sampler_accept(self._check(), int(token))
        self._reraise()

    def accept_history(self, tokens: Iterable[int]) -> None:
        """Show the chain tokens it did not sample (a prompt), as llama-server does:
        penalties and other stateful samplers count them as recent history, while
        a grammar is not advanced. Raises ``ValueError`` for ids outside the
        vocabulary of a vocabulary-bound member, and re-raises a PySampler's error."""
        self._check()
        members = [m._check() for m in self._members if not m.name.startswith("grammar")]
        accept = lib.llama_sampler_accept
        for tok in tokens:
            tok = int(tok)
            for ptr in members:
                accept(ptr, tok)
        self._reraise()

    def clone(self) -> SamplerChain:
        """An independent copy with the same samplers and state."""
        self._check()
        copies: list[Sampler] = []
        for s in self._members:
            if isinstance(s, PySampler):
                copies.append(s.clone_py())
            else:
                copy = Sampler(lib.llama_sampler_clone(s._ptr), s.name, selects=s.selects,
                               model=s.model)
                copy._bias = s._bias
                copies.append(copy)
        return SamplerChain(copies, perf=False)

    def perf(self) -> dict[str, float]:
        """Sampling time (ms) and count; zero unless created with ``perf=True``."""
        d = lib.llama_perf_sampler(self._check())
        return {"t_sample_ms": d.t_sample_ms, "n_sample": d.n_sample}

    def perf_reset(self) -> None:
        lib.llama_perf_sampler_reset(self._check())

    @classmethod
    def from_params(
        cls,
        model: Model,
        *,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        penalty_last_n: int = 64,
        seed: int | None = None,
        logit_bias: Mapping[int, float] | None = None,
        grammar: str | None = None,
        n_ctx: int | None = None,
        grammar_lazy: bool = False,
        trigger_patterns: Sequence[str] = (),
        trigger_tokens: Sequence[int] = (),
    ) -> SamplerChain:
        """llama.cpp's usual chain: [logit bias] [penalties] [grammar] top-k top-p min-p temp dist.

        ``temperature == 0`` means greedy (the filters are skipped). With
        ``grammar_lazy`` the grammar constrains only from a trigger on (a regex of
        ``trigger_patterns`` matching the output, or a token of ``trigger_tokens``),
        as llama.cpp does for tool calls; a lazy grammar without triggers raises.
        ``penalty_last_n=-1`` means the whole context and needs ``n_ctx``. Raises
        ``ValueError`` for out-of-range values and :class:`GrammarError`.
        """
        if penalty_last_n == -1:
            if n_ctx is None:
                raise ValueError("penalty_last_n=-1 (the whole context) needs n_ctx")
            penalty_last_n = int(n_ctx)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        n_vocab = model.n_vocab
        items: list[Sampler] = []
        if logit_bias:
            items.append(Sampler.logit_bias(n_vocab, logit_bias))
        if repeat_penalty != 1.0 or frequency_penalty or presence_penalty:
            items.append(Sampler.penalties(n_vocab, penalty_last_n, repeat_penalty,
                                           frequency_penalty, presence_penalty))
        if grammar is not None and grammar_lazy:
            if not trigger_patterns and not trigger_tokens:
                raise GrammarError("a lazy grammar needs at least one trigger pattern or token")
            items.append(Sampler.grammar_lazy(model, grammar, trigger_patterns=trigger_patterns,
                                              trigger_tokens=trigger_tokens))
        elif grammar is not None:
            items.append(Sampler.grammar(model, grammar))
        if temperature == 0:
            items.append(Sampler.greedy())
        else:
            if top_k > 0:
                items.append(Sampler.top_k(top_k))
            if top_p < 1.0:
                items.append(Sampler.top_p(top_p))
            if min_p > 0.0:
                items.append(Sampler.min_p(min_p))
            items.append(Sampler.temp(temperature))
            items.append(Sampler.dist(seed))
        return cls(items)
