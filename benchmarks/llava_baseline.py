"""The LLaVA-style baseline of ``versus_llava.py``, written as a user would with transformers + PEFT.

A frozen vision tower (cotune's MobileNetV2: its last 7 x 7 x 1280 grid, 49 patch tokens at
224 px), an ``mlp2x_gelu`` projector (Linear D_enc -> D_llm, GELU, Linear D_llm -> D_llm, as
LLaVA-1.5's ``build_vision_projector``) whose outputs are spliced into the LLM's ``inputs_embeds``
at the image positions, PEFT LoRA on every linear layer of the LLM, trained by
``transformers.Trainer``. ``LlavaForConditionalGeneration`` is not used because it builds its
vision tower from a transformers vision config, which MobileNetV2 here has not; the module below
is the same computation (``masked_scatter`` of the projected features into the text embeddings).

Choices, each from LLaVA-1.5 where it makes sense:

* image tokens: the prompt text holds ``<image>``; like LLaVA's ``tokenizer_image_token`` the text
  is split there and the pieces tokenized separately, with a sentinel id (LLaVA's
  ``IMAGE_TOKEN_INDEX`` -200) in between, here repeated once per patch token so the sequence
  length is known before the model runs (as transformers' LLaVA processor expands ``<image>``);
* labels: everything up to the assistant turn is -100; the answer and the chat template's
  end-of-turn token are supervised (LLaVA masks all but the responses);
* the vision tower is frozen, runs under ``no_grad`` and stays in eval mode while training:
  MobileNetV2 has batch norm, which in train mode would use batch statistics and drift its
  running statistics (LLaVA's CLIP has no batch norm, so LLaVA needs no such care);
* LoRA (``finetune_lora.sh``): r 128, alpha 256, dropout 0.05, every linear layer of the LLM
  blocks (PEFT ``all-linear``: the LM head is left out, as LLaVA's ``find_all_linear_names``
  does), bias none;
* optimisation: AdamW (the Trainer's default, fused where available), lr 2e-4, cosine schedule,
  warmup ratio 0.03, weight decay 0, gradient clipping at 1.0 (the Trainer's default). The
  projector gets its own lr, as LLaVA's ``mm_projector_lr`` does: ``finetune_lora.sh`` gives an
  already aligned projector 2e-5, but here the projector starts untrained (there is no stage-1
  feature alignment), so it gets stage 1's lr 1e-3 (``pretrain.sh``);
* no gradient checkpointing (``finetune_lora.sh`` uses it to fit 7B on a GPU; here it would only
  make the baseline slower);
* the loss is the LLM's own (``labels=``): logits over the whole vocabulary at every position, as
  transformers and LLaVA compute them (cotune's Trainer computes them only at supervised positions).

Trainable: LoRA matrices and the projector. Frozen: the LLM and the vision tower.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

#: LLaVA's sentinel for image positions in input_ids (llava/constants.py); never looked up in the
#: embedding table: those positions are overwritten by projected image features.
IMAGE_TOKEN_INDEX = -200
IMAGE_MARKER = "<image>"
IGNORE_INDEX = -100


@dataclass(frozen=True)
class LlavaRecipe:
    """LLaVA-1.5's LoRA fine-tuning settings (``scripts/v1_5/finetune_lora.sh``), the projector at
    stage 1's lr (module docstring)."""

    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lr: float = 2e-4
    projector_lr: float = 1e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    schedule: str = "cosine"


class LlavaStyleModel(nn.Module):
    """Frozen vision tower -> mlp2x_gelu projector -> spliced into the (LoRA-wrapped) LLM.

    Args:
        vision_tower: maps pixel values [B, 3, H, W] to a feature grid [B, D_enc, h, w] (frozen).
        llm: a causal LM (usually a PEFT model) taking ``inputs_embeds``.
        vision_width: D_enc; llm_width: D_llm.
    """

    main_input_name = "input_ids"  # lets the Trainer count input tokens

    def __init__(self, vision_tower: nn.Module, llm: nn.Module, vision_width: int, llm_width: int) -> None:
        super().__init__()
        self.vision_tower = vision_tower.requires_grad_(False)
        self.projector = nn.Sequential(nn.Linear(vision_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))
        self.llm = llm

    def train(self, mode: bool = True) -> "LlavaStyleModel":
        """The vision tower stays in eval mode (batch norm statistics are frozen with its weights)."""
        super().train(mode)
        self.vision_tower.eval()
        return self

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, H, W] -> projected patch tokens [B, N, D_llm] (N = h * w)."""
        weight = next(self.vision_tower.parameters())
        with torch.no_grad():
            grid = self.vision_tower(pixel_values.to(weight.device, weight.dtype))
        return self.projector(grid.flatten(2).transpose(1, 2))

    def num_image_tokens(self, image_size: int) -> int:
        """N for a square input of ``image_size`` pixels."""
        weight = next(self.vision_tower.parameters())
        with torch.no_grad():
            grid = self.vision_tower(torch.zeros(1, 3, image_size, image_size, device=weight.device, dtype=weight.dtype))
        return grid.shape[-2] * grid.shape[-1]

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """input_ids [B, S] with IMAGE_TOKEN_INDEX at N positions per row -> inputs_embeds [B, S, D_llm]."""
        image = input_ids == IMAGE_TOKEN_INDEX
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(image, 0))
        features = self.image_features(pixel_values)
        per_row = image.sum(1)
        if per_row.numel() != features.shape[0] or bool((per_row != features.shape[1]).any()):
            raise ValueError(
                f"image placeholders per row {per_row.tolist()} do not match {features.shape[0]} images of "
                f"{features.shape[1]} tokens each"
            )
        # Row-major fill: row b's placeholders receive image b's tokens in order.
        return embeds.masked_scatter(image.unsqueeze(-1), features.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor, labels: torch.Tensor | None = None):
        """input_ids/attention_mask/labels [B, S], pixel_values [B, 3, H, W] -> the LLM's output
        (``loss``: mean cross-entropy over supervised tokens, ``logits`` [B, S, V])."""
        return self.llm(inputs_embeds=self.embed(input_ids, pixel_values), attention_mask=attention_mask, labels=labels)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        """Left-padded prompts [B, T] -> new token ids [B, <= max_new_tokens] (the LLM's generate)."""
        return self.llm.generate(inputs_embeds=self.embed(input_ids, pixel_values), attention_mask=attention_mask, **kwargs)


def load_vision_tower(path: str | Path):
    """(MobileNetV2 ``features``: [B, 3, H, W] -> [B, D_enc, h, w], its image processor, its input
    size in pixels, D_enc), loaded by cotune's MobileNetV2 loader so the weights and the
    preprocessing are exactly cotune's."""
    from cotune.config.model import EncoderConfig
    from cotune.encoders.mobilenet import MobileNetEncoder

    encoder = MobileNetEncoder.load(EncoderConfig(type="mobilenet-v2", name_or_path=str(path), layers=(-1,), reduce="patches"))
    return encoder.backbone.features, encoder.processor, encoder.image_size, encoder.backbone.last_channel


def build_baseline(llm_path: str | Path, vision_path: str | Path, recipe: LlavaRecipe = LlavaRecipe(), llm_dtype=torch.float32):
    """(model, tokenizer, image processor, image tokens N) with LoRA on the LLM, as :class:`LlavaRecipe` says."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(llm_path))
    llm = AutoModelForCausalLM.from_pretrained(str(llm_path), dtype=llm_dtype)
    lora = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    llm = get_peft_model(llm, lora)
    tower, processor, image_size, width = load_vision_tower(vision_path)
    model = LlavaStyleModel(tower, llm, width, llm.get_input_embeddings().embedding_dim)
    return model, tokenizer, processor, model.num_image_tokens(image_size)


# ---------------------------------------------------------------------------------- data


def _tokens(tokenizer, text: str, image_tokens: int) -> list[int]:
    """Text with one ``<image>`` -> ids with IMAGE_TOKEN_INDEX x image_tokens in its place."""
    before, marker, after = text.partition(IMAGE_MARKER)
    ids = tokenizer(before, add_special_tokens=False)["input_ids"]
    if marker:
        ids += [IMAGE_TOKEN_INDEX] * image_tokens + tokenizer(after, add_special_tokens=False)["input_ids"]
    return ids


def chat_messages(question: str, system_prompt: str | None) -> list[dict]:
    """The conversation up to the answer: the image in front of the question, as LLaVA puts it."""
    messages = [{"role": "user", "content": f"{IMAGE_MARKER}\n{question}"}]
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + messages


def prompt_ids(tokenizer, question: str, system_prompt: str | None, image_tokens: int) -> list[int]:
    """Prompt ids [T] ending with the chat template's assistant header (generation prompt)."""
    text = tokenizer.apply_chat_template(chat_messages(question, system_prompt), tokenize=False, add_generation_prompt=True)
    return _tokens(tokenizer, text, image_tokens)


def training_ids(tokenizer, question: str, answer: str, system_prompt: str | None, image_tokens: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) [S]: the prompt unsupervised, the answer and the end-of-turn token supervised."""
    messages = chat_messages(question, system_prompt)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(f"the chat template does not render the prompt as a prefix of the answered conversation: {full!r}")
    # The template's whitespace after the end-of-turn token stays in the sequence but is not part
    # of the answer, so it is not supervised.
    reply_text = full[len(prompt):]
    reply = tokenizer(reply_text.rstrip(), add_special_tokens=False)["input_ids"]
    tail = tokenizer(reply_text[len(reply_text.rstrip()):], add_special_tokens=False)["input_ids"]
    ids = _tokens(tokenizer, prompt, image_tokens)
    return ids + reply + tail, [IGNORE_INDEX] * len(ids) + reply + [IGNORE_INDEX] * len(tail)


def pixel_values(processor, path: str | Path) -> torch.Tensor:
    """An image file -> [3, H, W] float32, through the vision tower's own processor."""
    with Image.open(path) as image:
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0].float()


class VqaDataset(torch.utils.data.Dataset):
    """easy-VQA style records [question, answer, image_id] with images ``<images>/<image_id>.png``."""

    def __init__(self, questions: Path, images: Path, tokenizer, processor, image_tokens: int, system_prompt: str | None) -> None:
        self.records = json.loads(Path(questions).read_text())
        self.images, self.tokenizer, self.processor = Path(images), tokenizer, processor
        self.image_tokens, self.system_prompt = image_tokens, system_prompt

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        question, answer, image_id = self.records[index]
        ids, labels = training_ids(self.tokenizer, question, answer, self.system_prompt, self.image_tokens)
        return {"input_ids": ids, "labels": labels, "pixel_values": pixel_values(self.processor, self.images / f"{image_id}.png")}


class Collator:
    """Right-pads a list of items -> input_ids/labels/attention_mask [B, S], pixel_values [B, 3, H, W]."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        width = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(item["input_ids"]), torch.tensor(item["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": torch.stack([i["pixel_values"] for i in items])}


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (ids [B, T], attention_mask [B, T]) padded on the left, for generation."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    return ids, mask


# ---------------------------------------------------------------------------------- training


def make_trainer(model: LlavaStyleModel, dataset, collator, *, steps: int, batch_size: int, out: Path, seed: int,
                 recipe: LlavaRecipe = LlavaRecipe(), device: str = "cpu", callbacks=(), logging_steps: int = 10):
    """A ``transformers.Trainer`` for ``steps`` optimizer steps of ``batch_size`` samples, with the
    projector in its own parameter group (LLaVA's ``mm_projector_lr``)."""
    from transformers import Trainer, TrainingArguments

    class ProjectorLrTrainer(Trainer):
        """LLaVATrainer's optimizer: the projector's parameters at ``projector_lr``."""

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                target = self.model if model is None else model
                projector = {id(p) for p in target.projector.parameters()}
                params = [p for p in target.parameters() if p.requires_grad]
                groups = [
                    {"params": [p for p in params if id(p) not in projector], "weight_decay": self.args.weight_decay},
                    {"params": [p for p in params if id(p) in projector], "weight_decay": self.args.weight_decay, "lr": recipe.projector_lr},
                ]
                optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)
                self.optimizer = optimizer_cls(groups, **kwargs)
            return self.optimizer

    cuda = device.startswith("cuda")
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
        learning_rate=recipe.lr, lr_scheduler_type=recipe.schedule, warmup_steps=recipe.warmup_ratio,
        weight_decay=recipe.weight_decay, max_grad_norm=1.0, bf16=cuda, use_cpu=not cuda, seed=seed,
        save_strategy="no", eval_strategy="no", report_to="none", logging_steps=logging_steps, disable_tqdm=True,
        remove_unused_columns=False, dataloader_num_workers=0, include_num_input_tokens_seen="non_padding",
    )
    return ProjectorLrTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=list(callbacks))
