"""Regenerates tests/data/vit_v4_lora: a tiny ViT and a LoRA adapter saved with transformers 4.x.

Run on the old lane:  PYTHONPATH=.lanes/old .venv/bin/python tests/make_v4_adapter_fixture.py
It stores the base model (save_pretrained, v4 key names), the adapter (v4 target names in the config and in
the state-dict keys, modules_to_save head), a fixed input and the adapted model's outputs.
"""

import os

import peft
import torch
import transformers
from safetensors.torch import save_file

assert transformers.__version__.startswith("4."), "run this with transformers 4.x (the old lane)"
root = os.path.join(os.path.dirname(__file__), "data", "vit_v4_lora")
torch.manual_seed(0)
config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                image_size=32, patch_size=8, num_labels=3)
model = transformers.ViTForImageClassification(config).eval()
model.save_pretrained(os.path.join(root, "base"), safe_serialization=True)
lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "output.dense"],
                       modules_to_save=["classifier"])
peft_model = peft.get_peft_model(model, lora)
with torch.no_grad():  # a non-trivial adapter: random B (PEFT initialises it to zero) and a changed head
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            parameter.add_(torch.randn_like(parameter) * 0.1)
peft_model.save_pretrained(os.path.join(root, "adapter"), safe_serialization=True)
pixels = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    logits = peft_model(pixel_values=pixels).logits
save_file({"pixel_values": pixels, "logits": logits}, os.path.join(root, "expected.safetensors"))
print("wrote", root)
