"""`lmdistill compress-vocab`: GLMD's vocabulary surgery alone, on any saved HF language model.

Ranks the tokens by frequency on the given text files, keeps the most frequent (plus special,
single-character and `--keep-token` tokens), shrinks the input embedding and the LM head (tied or not) to
them, and saves the model with a tokenizer that emits only kept ids (see lmdistill.models.vocab and
lmdistill.models.vocab_tokenizer). Everything is checked before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmdistill.errors import ConfigError


@dataclass
class CompressionResult:
    output: Path
    original_size: int
    kept_size: int
    coverage: float  # share of the corpus's tokens that are kept tokens
    corpus_tokens: int
    before: dict  # parameter_split of the input model
    after: dict


def compress_vocabulary(model_path: str, keep: float, corpus: list[str], output: str, substitute: str = "dot",
                        multiple: int = 64, keep_tokens: list[str] | None = None) -> CompressionResult:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from lmdistill.config import TeacherConfig
    from lmdistill.io_utils import atomic_dir
    from lmdistill.models.teacher import default_cache_dir, load_config_of, load_model, load_tokenizer, resolve_teacher
    from lmdistill.models.vocab import count_tokens, resolve_keep
    from lmdistill.models.vocab_tokenizer import compress_model, structure
    from lmdistill.recipes.glmd import has_lm_head
    from lmdistill.tasks.corpus import read_paragraphs, resolve_corpus
    from lmdistill.tasks.language_modeling import resolve_lm_type

    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out: {out} already exists and is not empty")
    files = resolve_corpus(corpus, "--corpus")
    source = resolve_teacher(TeacherConfig(path=model_path), default_cache_dir())
    config = load_config_of(source)
    if not has_lm_head(config):
        raise ConfigError(f"MODEL: {model_path} is a {config.architectures[0]} with no language-model head; "
                          "give a ...ForCausalLM or ...ForMaskedLM checkpoint")
    auto_class = AutoModelForCausalLM if resolve_lm_type(config) == "causal" else AutoModelForMaskedLM
    tokenizer = load_tokenizer(source, "MODEL")
    vocab_size = int(config.vocab_size)
    kept_size = resolve_keep(keep, vocab_size, multiple, key="--keep")
    forced, parts = structure(tokenizer)
    for token in keep_tokens or []:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = " + ".join(repr(p) for p in tokenizer.convert_ids_to_tokens(ids)) or "nothing"
            raise ConfigError(f"--keep-token: {token!r} is not one token of the tokenizer; it splits into {pieces}")
        forced.add(ids[0])
    texts = [p for path in files for p in read_paragraphs(path)]
    if not texts:
        raise ConfigError(f"--corpus: the files hold no text ({', '.join(str(f) for f in files[:3])})")
    counts = count_tokens(tokenizer, texts, vocab_size)
    model, missing = load_model(auto_class, source, {}, key="MODEL")
    if missing:
        raise ConfigError(f"MODEL: {model_path} has no trained language-model head ({len(missing)} weights missing)")
    done = compress_model(model, tokenizer, counts, kept_size, forced, parts, model.get_input_embeddings().weight,
                          substitute, {})
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        done.tokenizer.save_pretrained(tmp)
        done.vmap.save(tmp)
    return CompressionResult(out, vocab_size, done.vmap.kept_size, done.coverage, int(counts.sum()), done.before,
                             done.after)


def summary_lines(result: CompressionResult) -> list[str]:
    b, a = result.before, result.after
    return [
        f"vocabulary: {result.original_size} -> {result.kept_size} tokens; the kept tokens are "
        f"{100 * result.coverage:.2f}% of the corpus's {result.corpus_tokens:,} tokens",
        f"parameters: {b['total'] / 1e6:.2f}M -> {a['total'] / 1e6:.2f}M "
        f"(-{100 * (b['total'] - a['total']) / b['total']:.1f}%): embedding {b['embedding'] / 1e6:.2f}M -> "
        f"{a['embedding'] / 1e6:.2f}M, rest {a['rest'] / 1e6:.2f}M",
        f"saved: {result.output}",
    ]
