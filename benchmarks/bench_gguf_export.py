"""How faithful is `nexus export gguf`? Next-token agreement of each GGUF type with the model.

    .venv/bin/python benchmarks/bench_gguf_export.py --model default [--model RELEASE ...] \
        [--types f32,f16,bf16,q8_0] [--rows 40] [--json out.json]

For every model and type it exports the model to GGUF, loads the file back through Nexus's own
GGUF import (the path `nexus chat model.gguf` takes) and compares next-token distributions with
the model as saved, on held-out text: the first `--rows` PIQA validation goals with their correct
solution (`../shared/data/piqa/valid.jsonl`, evaluation data no Nexus phase trains on). It prints
the top-1 agreement (share of positions whose argmax is the same), the mean and max
KL(model || export) in nats per position, the file size and the export time.

With `--llama-cpp PYTHON` (an interpreter that has llama-cpp-python) it also runs each file in
llama.cpp on the same token ids and compares llama.cpp's logits with the model's the same way
(row `llama.cpp`): that covers llama.cpp's own kernels, e.g. its 8-bit activations for q8_0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIQA = ROOT.parent / "shared" / "data" / "piqa" / "valid.jsonl"


def held_out_texts(rows: int) -> list[str]:
    if not PIQA.is_file():
        raise SystemExit(f"held-out text not found: {PIQA}")
    lines = PIQA.read_text().splitlines()[:rows]
    texts = []
    for line in lines:
        row = json.loads(line)
        texts.append(f"{row['goal']} {row['sol1'] if int(row['label']) == 0 else row['sol2']}")
    return texts


_LLAMA_CPP_LOGITS = """
import json, sys
import numpy as np
from llama_cpp import Llama
rows = json.loads(open(sys.argv[2]).read())
llm = Llama(model_path=sys.argv[1], n_ctx=max(len(r) for r in rows) + 8, logits_all=True, n_threads=2,
            verbose=False)
out = {}
for i, ids in enumerate(rows):
    llm.reset()
    llm.eval(ids)
    out[str(i)] = np.array(llm.scores[: len(ids)], dtype=np.float32)
np.savez(sys.argv[3], **out)
"""


def llama_cpp_logits(python: str, path: Path, rows: list[list[int]], tmp: Path) -> list:
    """llama.cpp's logits for each row of token ids, from a subprocess running ``python``."""
    import numpy as np
    import torch

    ids_file, out_file = tmp / "ids.json", tmp / "llama_cpp_logits.npz"
    ids_file.write_text(json.dumps(rows))
    run = subprocess.run(
        [python, "-c", _LLAMA_CPP_LOGITS, str(path), str(ids_file), str(out_file)],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise SystemExit(f"llama.cpp failed on {path}:\n{run.stderr[-2000:]}")
    with np.load(out_file) as data:
        return [torch.from_numpy(data[str(i)]) for i in range(len(rows))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="model spec (repeatable); default: 'default'")
    p.add_argument("--types", default="f32,f16,bf16,q8_0", help="comma-separated GGUF types")
    p.add_argument("--rows", type=int, default=40, help="held-out PIQA rows to score")
    p.add_argument(
        "--llama-cpp", metavar="PYTHON", help="also compare llama.cpp's logits (this python has it)"
    )
    p.add_argument("--keep", help="directory to keep the exported files in (default: a temporary one)")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()

    import torch

    from nexus.models import convert_gguf, load_model, load_tokenizer
    from nexus.models.gguf_export import export_gguf, logits_agreement, next_token_agreement

    torch.set_grad_enabled(False)
    texts = held_out_texts(args.rows)
    results = []
    with tempfile.TemporaryDirectory(prefix="nexus-bench-gguf-") as tmp:
        out_dir = Path(args.keep) if args.keep else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for spec in args.model or ["default"]:
            reference, resolved = load_model(spec)
            tokenizer = load_tokenizer(resolved)
            label = Path(spec).name or spec
            for kind in args.types.split(","):
                path = out_dir / f"{label}-{kind}.gguf"
                start = time.perf_counter()
                exported = export_gguf(spec, path, kind, overwrite=True)
                seconds = time.perf_counter() - start
                converted = convert_gguf(path, Path(tmp) / f"reload-{label}-{kind}")
                candidate, _ = load_model(str(converted))
                agreement = next_token_agreement(reference, candidate, tokenizer, texts)
                row = {
                    "model": spec,
                    "type": kind,
                    "mib": exported.bytes / 2**20,
                    "export_s": seconds,
                    "positions": agreement.positions,
                    "top1": agreement.top1,
                    "mean_kl": agreement.mean_kl,
                    "max_kl": agreement.max_kl,
                }
                results.append(row)
                print(
                    f"{label:<24} {kind:<5} {row['mib']:8.1f} MiB  export {seconds:6.1f}s  "
                    f"top-1 {agreement.top1:7.2%}  mean KL {agreement.mean_kl:.2e}  "
                    f"max KL {agreement.max_kl:.2e}  ({agreement.positions} positions)",
                    flush=True,
                )
                del candidate
                if args.llama_cpp:
                    rows = [tokenizer(t)["input_ids"] for t in texts]
                    theirs = llama_cpp_logits(args.llama_cpp, path, rows, Path(tmp))
                    ours = [reference(torch.tensor([r])).logits[0] for r in rows]
                    lc = logits_agreement(zip(ours, theirs, strict=True))
                    row.update(
                        llama_cpp_top1=lc.top1, llama_cpp_mean_kl=lc.mean_kl, llama_cpp_max_kl=lc.max_kl
                    )
                    print(
                        f"{label:<24} {kind:<5} llama.cpp{'':>23}top-1 {lc.top1:7.2%}  mean KL "
                        f"{lc.mean_kl:.2e}  max KL {lc.max_kl:.2e}",
                        flush=True,
                    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
