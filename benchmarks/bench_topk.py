"""How much the top-k teacher-output cache changes the KD loss on real text.

The cache keeps, per token, the teacher's k largest logits and the log-sum-exp of the rest; the KL is
then taken between the teacher and student distributions coarsened to those k tokens plus one tail
bucket (`lmdistill.losses.topk_kd_kl`), a lower bound of the full KL. This script measures, on real
text, how far that is from the full KL (`kd_kl` on the full logits), and how well the gradient the
student receives (d loss / d student logits) points the same way (cosine), for several k and T.

Teacher: SmolLM2-135M (`teacher: smollm2`, `make causal-deps`). Students: layer subsets of it (the
kind the FCD and TED-LM benchmarks train), untrained, so the two distributions are far apart, as at
the start of distillation, and a close one (every other layer) for the later regime. Text: blocks of
128 tokens from data/wikitext2/eval.txt. Writes benchmarks/results/topk-kl.json and prints a table.

    .venv/bin/python benchmarks/bench_topk.py --blocks 16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lmdistill.config import TeacherConfig  # noqa: E402
from lmdistill.losses import kd_kl, topk_kd_kl  # noqa: E402
from lmdistill.models.features import TopKLogits  # noqa: E402
from lmdistill.models.students import layer_subset  # noqa: E402
from lmdistill.models.teacher import default_cache_dir, load_tokenizer, resolve_teacher  # noqa: E402
from lmdistill.tasks.corpus import read_paragraphs  # noqa: E402
from lmdistill.tasks.language_modeling import text_blocks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def gradient(student_logits: torch.Tensor, loss_fn) -> torch.Tensor:
    logits = student_logits.detach().clone().requires_grad_(True)
    loss_fn(logits).backward()
    return logits.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 16, 64, 256, 1024])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 15.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "topk-kl.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    source = resolve_teacher(TeacherConfig(path="smollm2"), default_cache_dir())
    tokenizer = load_tokenizer(source)
    teacher = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    layers = teacher.config.num_hidden_layers
    students = {
        "6 of 30 layers (0,5,...,25)": layer_subset(teacher, list(range(0, layers, 5))).eval(),
        "15 of 30 layers (0,2,...,28)": layer_subset(teacher, list(range(0, layers, 2))).eval(),
    }
    text = read_paragraphs(REPO / "data" / "wikitext2" / "eval.txt")
    blocks = text_blocks(text, tokenizer, args.block_size, causal=True)[: args.blocks]
    ids = torch.tensor(blocks)
    start = time.time()
    with torch.no_grad():
        teacher_logits = torch.cat([teacher(input_ids=ids[i:i + 4]).logits for i in range(0, len(ids), 4)])
        student_logits = {name: torch.cat([m(input_ids=ids[i:i + 4]).logits for i in range(0, len(ids), 4)])
                          for name, m in students.items()}
    vocab = teacher_logits.shape[-1]
    t_rows = teacher_logits.reshape(-1, vocab)
    rows = []
    for name, logits in student_logits.items():
        s_rows = logits.reshape(-1, vocab)
        for temperature in args.temperatures:
            full = kd_kl(s_rows, t_rows, temperature).item()
            full_grad = gradient(s_rows, lambda x: kd_kl(x, t_rows, temperature))
            probs = torch.softmax(t_rows / temperature, -1)
            for k in args.ks:
                top = t_rows.topk(k, dim=-1)
                tail = (t_rows / temperature).scatter(-1, top.indices, float("-inf")).logsumexp(-1)
                # The cache stores values in float16: measure with what training would read.
                sparse = TopKLogits(top.values.half().float(), top.indices, tail, temperature)
                approx = topk_kd_kl(s_rows, sparse, temperature).item()
                grad = gradient(s_rows, lambda x: topk_kd_kl(x, sparse, temperature))
                cosine = torch.nn.functional.cosine_similarity(grad.reshape(1, -1), full_grad.reshape(1, -1)).item()
                mass = probs.gather(-1, top.indices).sum(-1).mean().item()
                rows.append({"student": name, "temperature": temperature, "k": k, "full_kl": full, "topk_kl": approx,
                             "relative_error": (full - approx) / full, "grad_cosine": cosine,
                             "teacher_topk_mass": mass})
                print(f"{name} T={temperature:g} k={k}: full {full:.4f}, top-k {approx:.4f} "
                      f"({100 * (full - approx) / full:.2f}% lower), grad cosine {cosine:.4f}, top-k mass {mass:.3f}")
    result = {"teacher": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)", "text": "data/wikitext2/eval.txt",
              "tokens": int(ids.numel()), "block_size": args.block_size, "vocab": vocab, "value_dtype": "float16",
              "wall_s": round(time.time() - start, 1), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| student | T | k | full KL | top-k KL | lower by | grad cosine | teacher mass in top-k |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['student']} | {r['temperature']:g} | {r['k']} | {r['full_kl']:.4f} | {r['topk_kl']:.4f} | "
              f"{100 * r['relative_error']:.2f}% | {r['grad_cosine']:.4f} | {r['teacher_topk_mass']:.3f} |")


if __name__ == "__main__":
    main()
