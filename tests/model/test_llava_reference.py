"""cotune with a LLaVA configuration reproduces transformers' own LlavaForConditionalGeneration."""

import pytest
import torch
import transformers

from cotune.config import load_config
from cotune.model import build_model
from cotune.testing import tiny


@pytest.mark.parametrize("layers, merge", [([-2], "tokens"), ([-2, -3], "features")])
def test_llava_logits_match_transformers(tmp_path, layers, merge):
    torch.manual_seed(0)
    tokenizer = tiny.make_tokenizer()
    image_token_id = tiny.TOKENIZER_SIZE  # where cotune's tokenizer puts <image>
    vision = transformers.CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=30, patch_size=6)
    text = tiny.LLM_CONFIGS["llama"]()
    llava = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id, image_seq_length=25,
        vision_feature_layer=layers[0] if len(layers) == 1 else layers, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )).eval()

    # Save the parts as ordinary checkpoints and load them back through cotune's loading code.
    llava.model.vision_tower.save_pretrained(tmp_path / "vision")
    lm = transformers.LlamaForCausalLM(text)
    lm.model.load_state_dict(llava.model.language_model.state_dict())
    lm.lm_head.load_state_dict(llava.lm_head.state_dict())
    lm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    config = load_config(data=tiny.model_config(tmp_path / "llm", {"image": {
        "type": "clip", "name_or_path": str(tmp_path / "vision"), "layers": layers, "reduce": "patches",
        "layer_merge": merge, "connector": {"type": "mlp2x-gelu"},
    }}))
    model = build_model(config)
    assert model.placeholder_ids["image"] == image_token_id
    model.connectors["image"].load_state_dict(llava.model.multi_modal_projector.state_dict())

    words = tokenizer("what colour is the circle", add_special_tokens=False).input_ids
    ids = torch.tensor([[tokenizer.bos_token_id] + [image_token_id] * 25 + words] * 2)
    pixels = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        expected = llava(input_ids=ids, pixel_values=pixels).logits
        got = model(ids, media={"image": pixels}).logits
    assert (got - expected).abs().max() <= 1e-4
    assert model.parameter_counts()["connector.image"]["trainable"] == sum(p.numel() for p in llava.model.multi_modal_projector.parameters())
