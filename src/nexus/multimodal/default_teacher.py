"""The embedded default vision-language teacher, built on first use and cached.

No vision-language weights can be downloaded where Nexus is developed, so the multimodal
pipeline's default teacher is made here, for real, from parts that are local: the default
language model (SmolLM2-135M-Instruct, the text pipeline's ``default``) as the language tower
of a ``LlavaForConditionalGeneration`` with a small SigLIP vision tower and a two-layer
projector, trained LLaVA-style on the synthetic corpus (:mod:`nexus.multimodal.synthetic`):

1. *vision pre-training*: the vision tower alone, with linear read-outs of its patch features
   (flattened, and their mean) per capability (colour, shape, position, count, word), on rendered
   pictures -- the role CLIP/SigLIP pre-training plays for a real LLaVA, here in a few minutes;
2. *visual instruction tuning*: vision tower frozen, projector and language tower trained on
   image-question-answer rows, cross-entropy on the answer tokens only.

The result is a plain transformers directory (model + ``LlavaProcessor``) that
``AutoModelForImageTextToText`` / ``AutoProcessor`` load with no Nexus code. It is cached under
``$NEXUS_CACHE_DIR/vlm/<key>/`` (default ``~/.cache/nexus``), the key covering the language
model's weights and the recipe, and written atomically like the GGUF conversion, so a killed
build leaves no half directory. ``nexus_vlm_build.json`` in it records the recipe, the build's
wall time and the held-out accuracy measured at the end of the build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nexus.errors import NexusError
from nexus.multimodal.synthetic import _VALUES as VALUES
from nexus.multimodal.synthetic import CAPABILITIES, synthetic_examples
from nexus.utils import recover_dir, write_dir_atomically

log = logging.getLogger(__name__)

BUILD_FILE = "nexus_vlm_build.json"
RECIPE_VERSION = 3  # bump when the build code changes what it produces


@dataclass(frozen=True)
class TeacherRecipe:
    """How the default teacher is built (all of it enters the cache key)."""

    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 3
    vision_steps: int = 1200
    vision_batch: int = 64
    vision_lr: float = 2e-3
    tune_steps: int = 120
    tune_batch: int = 16
    projector_lr: float = 1e-3
    language_lr: float = 1e-4
    warmup_steps: int = 10
    heldout_rows: int = 200
    seed: int = 0
    precision: str = "auto"


def language_model_fingerprint(path: Path) -> str:
    """What identifies the language model's weights: the GGUF digest of a converted default, else
    the safetensors headers' sizes and names (cheap, no full read)."""
    source = path / "nexus_source.json"
    if source.is_file():
        return json.loads(source.read_text()).get("sha256", "")
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()


def teacher_cache_dir(recipe: TeacherRecipe, lm_path: Path) -> Path:
    from nexus.models.gguf import cache_root

    key = json.dumps(
        {"lm": language_model_fingerprint(lm_path), "recipe": asdict(recipe), "version": RECIPE_VERSION},
        sort_keys=True,
    )
    return cache_root() / "vlm" / hashlib.sha256(key.encode()).hexdigest()[:20]


def default_teacher_path(recipe: TeacherRecipe | None = None, *, build: bool = True) -> Path:
    """The cached default teacher's directory, built first when missing (``build=False``: a
    NexusError instead)."""
    from nexus.models import resolve_model

    recipe = recipe or TeacherRecipe()
    lm_path = Path(resolve_model("default").path)
    target = teacher_cache_dir(recipe, lm_path)
    if (recover_dir(target) / BUILD_FILE).is_file():
        return target
    if not build:
        raise NexusError(f"the default vision-language teacher is not built yet ({target})")
    build_default_teacher(recipe, lm_path, target)
    return target


# -- stage 1: vision pre-training ----------------------------------------------------------


class _ReadOut(nn.Module):
    """Two linear read-outs per capability: one of the flattened patch features (what a patch
    shows where) and one of their mean. The pooled one makes the tower write each picture's
    global attributes (which side, how many) into every patch token, where the language model
    finds them with no spatial reasoning of its own: with the flattened read-out alone the tower
    read position at 1.00 yet the tuned teacher answered position questions at 0.625."""

    def __init__(self, vision: nn.Module, n_patches: int, hidden: int):
        super().__init__()
        self.vision = vision
        self.heads = nn.ModuleDict({c: nn.Linear(n_patches * hidden, len(VALUES[c])) for c in CAPABILITIES})
        self.pooled = nn.ModuleDict({c: nn.Linear(hidden, len(VALUES[c])) for c in CAPABILITIES})

    def patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """What LLaVA's projector reads: the last encoder layer (``vision_feature_layer=-1``)."""
        return self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]

    def forward(self, pixels: torch.Tensor, rows: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, targets) of both read-outs of each capability, over the rows whose picture
        shows that attribute."""
        patches = self.patches(pixels)
        out = []
        for c in CAPABILITIES:
            index = [i for i, r in enumerate(rows) if c in r.attributes]
            if index:
                targets = torch.tensor([VALUES[c].index(rows[i].attributes[c]) for i in index])
                chosen = patches[torch.tensor(index)]
                out.append((self.heads[c](chosen.flatten(1)), targets))
                out.append((self.pooled[c](chosen.mean(1)), targets))
        return out


def _pixels(processor, examples) -> torch.Tensor:
    return processor.image_processor(
        images=[image for e in examples for image in e.images], return_tensors="pt"
    )["pixel_values"]


def _schedule(optimizer, warmup: int, total: int):
    from nexus.trainer.step import lr_factor

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup=warmup, total=total, min_ratio=0.1)
    )


def pretrain_vision(vision: nn.Module, processor, recipe: TeacherRecipe) -> dict[str, float]:
    """Stage 1: every attribute a picture shows is a label (a colour question's picture also
    teaches shape and count); returns the read-out accuracy of each question's own answer on
    dev pictures."""
    n_patches = (recipe.image_size // recipe.patch_size) ** 2
    model = _ReadOut(vision, n_patches, recipe.vision_hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.vision_lr, weight_decay=0.01)
    scheduler = _schedule(optimizer, recipe.warmup_steps, recipe.vision_steps)
    model.train()
    for step in range(recipe.vision_steps):
        rows = synthetic_examples(
            "train",
            recipe.vision_batch,
            seed=recipe.seed,
            size=recipe.image_size,
            offset=step * recipe.vision_batch,
        )
        heads = model(_pixels(processor, rows), rows)
        loss = sum(F.cross_entropy(logits, targets) for logits, targets in heads) / len(heads)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 50 == 0:
            log.info("vision pre-training step %d/%d: loss %.3f", step + 1, recipe.vision_steps, loss.item())
    model.eval()
    rows = synthetic_examples("dev", 500, seed=recipe.seed, size=recipe.image_size)
    with torch.no_grad():
        features = model.patches(_pixels(processor, rows)).flatten(1)
    accuracy = {}
    for c in CAPABILITIES:
        index = [i for i, r in enumerate(rows) if r.capability == c]
        logits = model.heads[c](features[torch.tensor(index)])
        truth = torch.tensor([VALUES[c].index(rows[i].response) for i in index])
        accuracy[c] = round(float((logits.argmax(-1) == truth).float().mean()), 4)
    return accuracy


# -- stage 2: visual instruction tuning ------------------------------------------------------


def answer_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the response tokens; the LM head runs on those positions only."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs, use_cache=False).last_hidden_state
    mask = labels != -100
    logits = model.lm_head(hidden[mask])
    return F.cross_entropy(logits.float(), labels[mask])


def instruction_tune(model: nn.Module, processor, recipe: TeacherRecipe, precision: str) -> list[float]:
    """Stage 2: projector + language tower on image-question-answer rows; returns the losses."""
    from nexus.hardware import autocast
    from nexus.multimodal.vlm import encode

    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied to the head: answers are known words
    projector = list(model.model.multi_modal_projector.parameters())
    language = [p for p in model.model.language_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": projector, "lr": recipe.projector_lr},
            {"params": language, "lr": recipe.language_lr},
        ],
        weight_decay=0.0,
        betas=(0.9, 0.95),
    )
    scheduler = _schedule(optimizer, recipe.warmup_steps, recipe.tune_steps)
    offset = recipe.vision_steps * recipe.vision_batch  # rows the vision stage did not see
    losses = []
    model.train()
    for step in range(recipe.tune_steps):
        rows = synthetic_examples(
            "train",
            recipe.tune_batch,
            seed=recipe.seed,
            size=recipe.image_size,
            offset=offset + step * recipe.tune_batch,
        )
        with autocast(precision, "cpu"):
            loss = answer_loss(model, encode(processor, rows))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(projector + language, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if (step + 1) % 10 == 0:
            log.info("instruction tuning step %d/%d: loss %.3f", step + 1, recipe.tune_steps, float(loss))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


def build_default_teacher(recipe: TeacherRecipe, lm_path: Path, target: Path) -> Path:
    """Both stages, the held-out measurement, and the atomic write of ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, SiglipVisionConfig

    from nexus.hardware import resolve_precision
    from nexus.multimodal.vlm import build_llava, build_processor, evaluate_accuracy

    log.info("building the default vision-language teacher (once; cached at %s)", target)
    started, cpu_started = time.monotonic(), time.process_time()
    torch.manual_seed(recipe.seed)
    precision = resolve_precision(recipe.precision, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(lm_path)
    language_model = AutoModelForCausalLM.from_pretrained(lm_path, dtype=torch.float32)
    processor = build_processor(tokenizer, image_size=recipe.image_size, patch_size=recipe.patch_size)
    vision_config = SiglipVisionConfig(
        hidden_size=recipe.vision_hidden,
        intermediate_size=4 * recipe.vision_hidden,
        num_hidden_layers=recipe.vision_layers,
        num_attention_heads=recipe.vision_heads,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
    )
    model = build_llava(language_model, processor, vision_config)
    del language_model
    t0 = time.monotonic()
    readout = pretrain_vision(model.model.vision_tower, processor, recipe)
    vision_seconds = time.monotonic() - t0
    log.info("vision read-out accuracy on dev pictures: %s", readout)
    t0 = time.monotonic()
    losses = instruction_tune(model, processor, recipe, precision)
    tune_seconds = time.monotonic() - t0
    t0 = time.monotonic()
    heldout = synthetic_examples("heldout", recipe.heldout_rows, seed=recipe.seed, size=recipe.image_size)
    accuracy = evaluate_accuracy(model, processor, heldout)
    eval_seconds = time.monotonic() - t0
    record: dict[str, Any] = {
        "recipe": asdict(recipe),
        "recipe_version": RECIPE_VERSION,
        "language_model": str(lm_path),
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        "seconds": {
            "vision_pretraining": round(vision_seconds, 1),
            "instruction_tuning": round(tune_seconds, 1),
            "heldout_eval": round(eval_seconds, 1),
            "total": round(time.monotonic() - started, 1),
            "cpu_total": round(time.process_time() - cpu_started, 1),  # this process's CPU time
        },
        "vision_readout_accuracy": readout,
        "tune_loss_first_last": [losses[0], sum(losses[-10:]) / len(losses[-10:])],
        "heldout": {k: v for k, v in accuracy.items() if k != "rows"},
    }
    log.info(
        "default teacher built in %.0f s: held-out multiple choice %.1f%%, exact match %.1f%%",
        record["seconds"]["total"],
        100 * accuracy["multiple_choice"],
        100 * accuracy["exact_match"],
    )

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        (tmp / BUILD_FILE).write_text(json.dumps(record, indent=2) + "\n")

    write_dir_atomically(
        target,
        write,
        what="the default vision-language teacher",
        kept=lambda: "set NEXUS_CACHE_DIR to a directory you can write",
    )
    return target
