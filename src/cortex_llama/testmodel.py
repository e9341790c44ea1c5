"""Make small llama-architecture GGUF models with random weights, for tests and demos.

The models are real GGUF files that llama.cpp loads like any other: llama
architecture, random weights (deterministic by seed), an SPM vocab with
``<unk>``, ``<s>``, ``</s>``, ChatML control tokens, the 256 byte-fallback tokens
and ordinary pieces, and a ChatML chat template. Their output is noise, but every
code path is real.

Writing needs the ``gguf`` package (``pip install cortex-llama[testmodel]``).
"""

from __future__ import annotations

import itertools
import string
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ._templates import CHATML

__all__ = ["TestModelSpec", "PRESETS", "make_test_model", "make_test_lora", "make_test_projector",
           "make_test_audio_projector", "CHATML_TEMPLATE"]

CHATML_TEMPLATE = CHATML

# token types of the GGUF SPM vocab (llama.cpp's llama_token_type)
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6
_SPACE = "\u2581"  # SentencePiece's word-boundary marker
_SPECIAL = [("<unk>", _UNKNOWN), ("<s>", _CONTROL), ("</s>", _CONTROL),
            ("<|im_start|>", _CONTROL), ("<|im_end|>", _CONTROL)]
# llama.cpp finds a vocab's FIM tokens by these texts (fim_pre, fim_suf, fim_mid, fim_rep, fim_sep)
#: a ranking model's prompt (llama-server fills in {query} and {document}), Qwen3-reranker style
RERANK_TEMPLATE = ("<|im_start|>user\nDoes the document answer the query? Query: {query}\nDocument: {document}"
                   "<|im_end|>\n<|im_start|>assistant\n")
_FIM = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|repo_name|>", "<|file_sep|>"]


@dataclass(frozen=True)
class TestModelSpec:
    """The shape of a generated model."""

    __test__ = False  # not a pytest test class

    n_vocab: int = 512
    n_embd: int = 64
    n_ff: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ctx: int = 2048
    dtype: str = "f32"  # weights of the 2-D tensors: "f32" or "f16"
    seed: int = 0
    name: str = "cortex-llama test model"
    fim: bool = False  # end the vocab with Qwen-style fill-in-the-middle control tokens (_FIM)
    #: a reranker: Qwen3's architecture (q/k norms) with a one-output classification
    #: head (``cls.output``) and rank pooling declared, as llama.cpp converts Qwen3 rerankers
    ranking_head: bool = False

    def __post_init__(self) -> None:
        if self.n_vocab < len(_SPECIAL) + 256 + 1 + (len(_FIM) if self.fim else 0):
            raise ValueError(f"n_vocab={self.n_vocab} is too small for the special and byte tokens")
        if self.n_embd % self.n_head or self.n_head % self.n_head_kv:
            raise ValueError(
                f"n_embd={self.n_embd} must divide by n_head={self.n_head}, "
                f"and n_head by n_head_kv={self.n_head_kv}"
            )
        if self.dtype not in ("f32", "f16"):
            raise ValueError(f"dtype must be 'f32' or 'f16', not {self.dtype!r}")


PRESETS: dict[str, TestModelSpec] = {
    "tiny": TestModelSpec(),
    "small": TestModelSpec(n_vocab=4096, n_embd=256, n_ff=768, n_layer=4, n_head=8, n_head_kv=4),
    # TinyLlama-1.1B's shape
    "1b": TestModelSpec(
        n_vocab=32000, n_embd=2048, n_ff=5632, n_layer=22, n_head=32, n_head_kv=4, dtype="f16",
    ),
}


def _ordinary_pieces(count: int) -> list[str]:
    """Deterministic SPM pieces: single characters first, then longer letter runs."""
    singles = [_SPACE] + [c for c in string.printable if c not in string.whitespace]
    pieces: list[str] = list(singles) + [_SPACE + c for c in singles[1:]]
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    for n in itertools.count(2):
        for combo in itertools.product(letters, repeat=n):
            word = "".join(combo)
            pieces.append(_SPACE + word)
            pieces.append(word)
            if len(pieces) >= count:
                return pieces[:count]
    raise AssertionError("unreachable")


def build_vocab(n_vocab: int, fim: bool = False) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of an SPM vocab of ``n_vocab`` entries;
    ``fim`` replaces its last ordinary pieces by the FIM control tokens."""
    special = _SPECIAL
    tokens = [t for t, _ in special]
    types = [k for _, k in special]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    ordinary = _ordinary_pieces(n_vocab - len(tokens))
    tokens += ordinary
    types += [_NORMAL] * len(ordinary)
    # SPM merges the adjacent pair whose joined piece scores highest: rank order.
    scores = [0.0] * (len(special) + 256) + [-float(i) for i in range(len(ordinary))]
    if fim:
        tokens[-len(_FIM):] = _FIM
        types[-len(_FIM):] = [_CONTROL] * len(_FIM)
        scores[-len(_FIM):] = [0.0] * len(_FIM)
    return tokens, scores, types


def _tensors(spec: TestModelSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    wdt = np.float16 if spec.dtype == "f16" else np.float32
    head_dim = spec.n_embd // spec.n_head
    n_embd_kv = head_dim * spec.n_head_kv

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        out = rng.standard_normal((rows, cols), dtype=np.float32)
        out *= scale
        return out.astype(wdt, copy=False)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(spec.n_embd, dtype=np.float32)).astype(np.float32)

    s_in = 1.0 / np.sqrt(spec.n_embd)
    tensors: dict[str, np.ndarray] = {"token_embd.weight": mat(spec.n_vocab, spec.n_embd, 1.0)}
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        tensors[p + "attn_norm.weight"] = norm()
        tensors[p + "attn_q.weight"] = mat(spec.n_embd, spec.n_embd, s_in)
        tensors[p + "attn_k.weight"] = mat(n_embd_kv, spec.n_embd, s_in)
        tensors[p + "attn_v.weight"] = mat(n_embd_kv, spec.n_embd, s_in)
        tensors[p + "attn_output.weight"] = mat(spec.n_embd, spec.n_embd, s_in)
        if spec.ranking_head:  # Qwen3's per-head q/k RMS norms
            tensors[p + "attn_q_norm.weight"] = norm()[:head_dim].copy()
            tensors[p + "attn_k_norm.weight"] = norm()[:head_dim].copy()
        tensors[p + "ffn_norm.weight"] = norm()
        tensors[p + "ffn_gate.weight"] = mat(spec.n_ff, spec.n_embd, s_in)
        tensors[p + "ffn_up.weight"] = mat(spec.n_ff, spec.n_embd, s_in)
        tensors[p + "ffn_down.weight"] = mat(spec.n_embd, spec.n_ff, 1.0 / np.sqrt(spec.n_ff))
    tensors["output_norm.weight"] = norm()
    # A wide output projection spreads the logits, so greedy picks are far from
    # ties and stay identical across batch shapes and thread counts.
    tensors["output.weight"] = mat(spec.n_vocab, spec.n_embd, 4.0 * s_in)
    if spec.ranking_head:
        # two outputs, "yes" and "no", softmaxed by llama.cpp: the score is P(yes)
        tensors["cls.output.weight"] = mat(2, spec.n_embd, 4.0 * s_in).astype(np.float32)
    return tensors


def make_test_model(
    path: str | Path,
    preset: str | TestModelSpec = "tiny",
    *,
    chat_template: str | None = CHATML_TEMPLATE,
    **overrides: Any,
) -> Path:
    """Write a llama-architecture GGUF model with random weights to ``path``
    (Qwen3's, with a classification head, for ``ranking_head=True``).

    ``preset`` is a name from :data:`PRESETS` (``tiny``, ``small``, ``1b``) or a
    :class:`TestModelSpec`; keyword ``overrides`` replace fields of it (``seed=1``,
    ``n_layer=4``, ``fim=True`` for a vocab with fill-in-the-middle tokens, ...).
    Returns the path.

    Raises ``ValueError`` for an unknown preset or an impossible shape, and
    ``ImportError`` when the ``gguf`` package is missing.
    """
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "making test models needs the gguf package: pip install 'cortex-llama[testmodel]'"
        ) from exc
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        spec = PRESETS[preset]
    else:
        spec = preset
    if overrides:
        spec = replace(spec, **overrides)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    writer = gguf.GGUFWriter(str(path), "qwen3" if spec.ranking_head else "llama")
    writer.add_name(spec.name)
    writer.add_description("random weights made by cortex_llama.testmodel: " + str(asdict(spec)))
    writer.add_context_length(spec.n_ctx)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_dimension_count(spec.n_embd // spec.n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(spec.n_vocab)
    if spec.ranking_head:
        writer.add_pooling_type(gguf.PoolingType.RANK)
        writer.add_classifier_output_labels(["yes", "no"])
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_F16 if spec.dtype == "f16" else gguf.LlamaFileType.ALL_F32
    )

    tokens, scores, types = build_vocab(spec.n_vocab, spec.fim)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None and spec.ranking_head:
        writer.add_chat_template([{"name": "default", "template": chat_template},
                                  {"name": "rerank", "template": RERANK_TEMPLATE}])
    elif chat_template is not None:
        writer.add_chat_template(chat_template)

    _write(writer, _tensors(spec))
    return path


def make_test_lora(
    path: str | Path,
    preset: str | TestModelSpec = "tiny",
    *,
    rank: int = 4,
    alpha: float = 8.0,
    targets: tuple[str, ...] = ("attn_q", "attn_v", "ffn_up"),
    seed: int = 1,
    scale: float = 0.5,
) -> Path:
    """Write a random LoRA adapter GGUF that fits the model of ``preset``.

    Every layer's ``targets`` get a ``lora_a`` (rank x n_in) and ``lora_b``
    (n_out x rank) pair. Raises ``ValueError`` for an unknown preset or target.
    """
    import gguf

    spec = PRESETS[preset] if isinstance(preset, str) else preset
    head_dim = spec.n_embd // spec.n_head
    shapes = {  # (n_out, n_in) of each base weight
        "attn_q": (spec.n_embd, spec.n_embd),
        "attn_k": (head_dim * spec.n_head_kv, spec.n_embd),
        "attn_v": (head_dim * spec.n_head_kv, spec.n_embd),
        "attn_output": (spec.n_embd, spec.n_embd),
        "ffn_gate": (spec.n_ff, spec.n_embd),
        "ffn_up": (spec.n_ff, spec.n_embd),
        "ffn_down": (spec.n_embd, spec.n_ff),
    }
    unknown = set(targets) - set(shapes)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {sorted(shapes)}")
    rng = np.random.default_rng(seed)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    tensors: dict[str, np.ndarray] = {}
    for i in range(spec.n_layer):
        for t in targets:
            n_out, n_in = shapes[t]
            a = (rng.standard_normal((rank, n_in), dtype=np.float32) * scale / np.sqrt(n_in))
            b = (rng.standard_normal((n_out, rank), dtype=np.float32) * scale)
            tensors[f"blk.{i}.{t}.weight.lora_a"] = a.astype(np.float32)
            tensors[f"blk.{i}.{t}.weight.lora_b"] = b.astype(np.float32)
    _write(writer, tensors)
    return path


def make_test_projector(
    path: str | Path,
    preset: str | TestModelSpec = "tiny",
    *,
    image_size: int = 32,
    patch_size: int = 8,
    n_embd: int = 64,
    n_head: int = 4,
    n_ff: int = 96,
    n_layer: int = 2,
    proj_hidden: int = 128,
    text_n_embd: int | None = None,
    dtype: str = "f32",
    seed: int = 2,
) -> Path:
    """Write a random-weight vision projector (mmproj) GGUF for the model of ``preset``.

    The file is what llama.cpp's libmtmd loads for a LLaVA-style model:
    ``general.architecture=clip``, projector type ``mlp`` (a ViT of ``n_layer``
    pre-norm blocks over ``patch_size`` patches of an ``image_size`` square image,
    then a two-layer GELU MLP into the text model's embedding space). Every image
    becomes ``(image_size // patch_size) ** 2`` embeddings of width
    ``text_n_embd`` (default: the preset's ``n_embd``; pass another width to make a
    projector that does not fit the text model). ``dtype`` ("f32" or "f16") is the
    type of the 2-D weights.

    Raises ``ValueError`` for an impossible shape and ``ImportError`` when the
    ``gguf`` package is missing.
    """
    import gguf

    spec = PRESETS[preset] if isinstance(preset, str) else preset
    out_dim = spec.n_embd if text_n_embd is None else int(text_n_embd)
    if image_size % patch_size or image_size <= 0 or patch_size <= 0:
        raise ValueError(f"image_size={image_size} must be a positive multiple of patch_size={patch_size}")
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} must divide by n_head={n_head}")
    if n_ff == n_embd:
        raise ValueError("n_ff must differ from n_embd (llama.cpp reads equal sizes as a legacy "
                         "swapped-FFN file)")
    if n_layer < 1 or dtype not in ("f32", "f16"):
        raise ValueError(f"need n_layer >= 1 and dtype 'f32' or 'f16' (got {n_layer}, {dtype!r})")
    rng = np.random.default_rng(seed)
    wdt = np.float16 if dtype == "f16" else np.float32
    n_patches = (image_size // patch_size) ** 2

    def mat(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(wdt)

    def vec(n: int, center: float = 0.0, scale: float = 0.1) -> np.ndarray:
        return (center + scale * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    s_in = 1.0 / np.sqrt(n_embd)
    tensors: dict[str, np.ndarray] = {
        # conv2d kernel: numpy (out, in, kh, kw) is ggml's [kw, kh, in, out]
        "v.patch_embd.weight": mat(n_embd, 3, patch_size, patch_size,
                                   scale=1.0 / np.sqrt(3 * patch_size * patch_size)),
        "v.patch_embd.bias": vec(n_embd),
        "v.position_embd.weight": mat(n_patches, n_embd, scale=0.5).astype(np.float32),
        "v.pre_ln.weight": vec(n_embd, 1.0),
        "v.pre_ln.bias": vec(n_embd),
    }
    tensors.update(_encoder_blocks("v", n_layer, n_embd, n_ff, mat, vec))
    tensors["mm.0.weight"] = mat(proj_hidden, n_embd, scale=s_in)
    tensors["mm.0.bias"] = vec(proj_hidden)
    tensors["mm.2.weight"] = mat(out_dim, proj_hidden, scale=1.0 / np.sqrt(proj_hidden))
    tensors["mm.2.bias"] = vec(out_dim)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name("cortex-llama test projector")
    writer.add_description(f"random-weight LLaVA-style mmproj for a {out_dim}-wide text model")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_audio_encoder", False)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", image_size)
    writer.add_uint32("clip.vision.patch_size", patch_size)
    writer.add_uint32("clip.vision.embedding_length", n_embd)
    writer.add_uint32("clip.vision.feed_forward_length", n_ff)
    writer.add_uint32("clip.vision.block_count", n_layer)
    writer.add_uint32("clip.vision.attention.head_count", n_head)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_uint32("clip.vision.projection_dim", out_dim)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    _write(writer, tensors)
    return path


def make_test_audio_projector(
    path: str | Path,
    preset: str | TestModelSpec = "tiny",
    *,
    n_embd: int = 64,
    n_head: int = 4,
    n_ff: int = 96,
    n_layer: int = 1,
    n_mel: int = 80,
    stack_factor: int = 4,
    proj_hidden: int = 64,
    seed: int = 3,
) -> Path:
    """Write a random-weight audio projector (mmproj) GGUF for the model of ``preset``:
    projector type ``ultravox`` (a Whisper-style encoder over ``n_mel`` log-mel bins
    of 16 kHz audio, then frame stacking and a SwiGLU MLP into the text model's
    embedding space). Every started 30 s of audio becomes
    ``1500 / stack_factor`` embeddings (``stack_factor`` must divide 1500: libmtmd
    checks that count).

    Raises ``ValueError`` for an impossible shape and ``ImportError`` without ``gguf``.
    """
    import gguf

    spec = PRESETS[preset] if isinstance(preset, str) else preset
    if n_embd % n_head or n_ff == n_embd or n_layer < 1 or 1500 % stack_factor:
        raise ValueError(f"n_embd={n_embd} must divide by n_head={n_head}, n_ff must differ from "
                         f"n_embd, n_layer must be >= 1 and stack_factor={stack_factor} divide 1500")
    rng = np.random.default_rng(seed)
    n_pos = 1500  # Whisper: 3000 mel frames per 30 s, halved by the second convolution

    def mat(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)

    def vec(n: int, center: float = 0.0, scale: float = 0.1) -> np.ndarray:
        return (center + scale * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    stacked = n_embd * stack_factor
    tensors: dict[str, np.ndarray] = {
        # conv1d kernels: numpy (out, in, k) is ggml's [k, in, out]; biases [1, out]
        "a.conv1d.1.weight": mat(n_embd, n_mel, 3, scale=1.0 / np.sqrt(3 * n_mel)),
        "a.conv1d.1.bias": vec(n_embd).reshape(n_embd, 1),
        "a.conv1d.2.weight": mat(n_embd, n_embd, 3, scale=1.0 / np.sqrt(3 * n_embd)),
        "a.conv1d.2.bias": vec(n_embd).reshape(n_embd, 1),
        "a.position_embd.weight": mat(n_pos, n_embd, scale=0.5),
        "a.post_ln.weight": vec(n_embd, 1.0),
        "a.post_ln.bias": vec(n_embd),
    }
    # Whisper's key projection has no bias
    tensors.update(_encoder_blocks("a", n_layer, n_embd, n_ff, mat, vec, key_bias=False))
    tensors["mm.a.norm_pre.weight"] = vec(stacked, 1.0)
    tensors["mm.a.mlp.1.weight"] = mat(2 * proj_hidden, stacked, scale=1.0 / np.sqrt(stacked))
    tensors["mm.a.norm_mid.weight"] = vec(proj_hidden, 1.0)
    tensors["mm.a.mlp.2.weight"] = mat(spec.n_embd, proj_hidden, scale=1.0 / np.sqrt(proj_hidden))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name("cortex-llama test audio projector")
    writer.add_description(f"random-weight ultravox-style mmproj for a {spec.n_embd}-wide text model")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_bool("clip.has_vision_encoder", False)
    writer.add_bool("clip.has_audio_encoder", True)
    writer.add_string("clip.projector_type", "ultravox")
    writer.add_uint32("clip.audio.embedding_length", n_embd)
    writer.add_uint32("clip.audio.feed_forward_length", n_ff)
    writer.add_uint32("clip.audio.block_count", n_layer)
    writer.add_uint32("clip.audio.attention.head_count", n_head)
    writer.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-5)
    writer.add_uint32("clip.audio.projection_dim", spec.n_embd)
    writer.add_uint32("clip.audio.num_mel_bins", n_mel)
    writer.add_uint32("clip.audio.projector.stack_factor", stack_factor)
    _write(writer, tensors)
    return path


def _write(writer: Any, tensors: Mapping[str, np.ndarray]) -> None:
    """Add ``tensors`` to the gguf ``writer`` and write the file."""
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _encoder_blocks(prefix: str, n_layer: int, n_embd: int, n_ff: int, mat: Callable[..., np.ndarray],
                    vec: Callable[..., np.ndarray], key_bias: bool = True) -> dict[str, np.ndarray]:
    """The tensors of ``n_layer`` pre-norm encoder blocks as libmtmd's clip loader
    names them (``{prefix}.blk.{i}.attn_q.weight``, ...), drawn from ``mat``/``vec``
    in a fixed order."""
    s_in = 1.0 / np.sqrt(n_embd)
    tensors: dict[str, np.ndarray] = {}
    for i in range(n_layer):
        p = f"{prefix}.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[p + name + ".weight"] = mat(n_embd, n_embd, scale=s_in)
            if key_bias or name != "attn_k":
                tensors[p + name + ".bias"] = vec(n_embd)
        tensors[p + "ln1.weight"] = vec(n_embd, 1.0)
        tensors[p + "ln1.bias"] = vec(n_embd)
        tensors[p + "ln2.weight"] = vec(n_embd, 1.0)
        tensors[p + "ln2.bias"] = vec(n_embd)
        tensors[p + "ffn_up.weight"] = mat(n_ff, n_embd, scale=s_in)
        tensors[p + "ffn_up.bias"] = vec(n_ff)
        tensors[p + "ffn_down.weight"] = mat(n_embd, n_ff, scale=1.0 / np.sqrt(n_ff))
        tensors[p + "ffn_down.bias"] = vec(n_embd)
    return tensors
